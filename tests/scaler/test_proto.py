"""The vendored KEDA proto: the wire contract's names and numbers, and the committed stubs in step with it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from scaler.proto import externalscaler_pb2 as pb
from tests.support import REPO

#: KEDA's externalscaler.proto (pkg/scalers/externalscaler): message -> {field: number}.
KEDA_FIELDS = {
    "ScaledObjectRef": {"name": 1, "namespace": 2, "scalerMetadata": 3},
    "IsActiveResponse": {"result": 1},
    "GetMetricSpecResponse": {"metricSpecs": 1},
    "MetricSpec": {"metricName": 1, "targetSize": 2, "targetSizeFloat": 3},
    "GetMetricsRequest": {"scaledObjectRef": 1, "metricName": 2},
    "GetMetricsResponse": {"metricValues": 1},
    "MetricValue": {"metricName": 1, "metricValue": 2, "metricValueFloat": 3},
}


@pytest.mark.parametrize(("message", "fields"), sorted(KEDA_FIELDS.items()))
def test_field_numbers_are_kedas(message: str, fields: dict[str, int]) -> None:
    descriptor = pb.DESCRIPTOR.message_types_by_name[message]
    assert {field.name: field.number for field in descriptor.fields} == fields


def test_service_and_package_are_kedas() -> None:
    service = pb.DESCRIPTOR.services_by_name["ExternalScaler"]
    assert service.full_name == "externalscaler.ExternalScaler"
    assert [method.name for method in service.methods] == ["IsActive", "StreamIsActive", "GetMetricSpec", "GetMetrics"]


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    descriptor_set = tmp_path / "externalscaler.pb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--descriptor_set_out={descriptor_set}",
         "scaler/proto/externalscaler.proto"],
        cwd=REPO, check=True, timeout=60,
    )  # fmt: skip
    from_proto = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file[0]
    _drop_json_names(from_proto.message_type)  # descriptor sets carry json_name; generated code leaves it out
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert from_proto == committed, "regenerate the stubs (see scaler/README.md)"


def _drop_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)
