"""The generated bootstrap is accepted by Envoy's own validator, for an IP and a DNS-named xDS server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gateway.bootstrap import XDS_CLUSTER
from gateway.launcher import envoy_binary
from tests.support import KAPA


@pytest.mark.parametrize(
    ("xds_host", "cluster_type", "flags", "api_type"),
    [
        ("127.0.0.1", "STATIC", [], "GRPC"),
        ("kapa-gateway.kapa", "STRICT_DNS", ["--xds-delta"], "DELTA_GRPC"),
    ],
)
def test_written_bootstrap_passes_envoy_validation(
    tmp_path: Path, xds_host: str, cluster_type: str, flags: list[str], api_type: str
) -> None:
    path = tmp_path / "envoy.json"
    subprocess.run(
        [*KAPA, "gateway", "--write-bootstrap", str(path), "--envoy-xds-host", xds_host, "--xds-port", "18123",
         "--node-id", "gw-0", *flags],
        check=True, timeout=30,
    )
    config = json.loads(path.read_text())
    assert config["node"]["id"] == "gw-0"
    (cluster,) = config["static_resources"]["clusters"]
    assert (cluster["name"], cluster["type"]) == (XDS_CLUSTER, cluster_type)
    ads = config["dynamic_resources"]["ads_config"]
    assert (ads["api_type"], ads["grpc_services"][0]["envoy_grpc"]["cluster_name"]) == (api_type, XDS_CLUSTER)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
