"""End to end: `kapa scaler` reads a real Prometheus scraping real queue-proxies in front of the sample app,
and a gRPC client generated from the vendored KEDA proto calls all four RPCs; HTTP poke, explain, metrics.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
import yaml

from kapa.core import contract
from kapa.local.prometheus import PrometheusServer, ScrapeTarget
from kapa.core.services import ServiceKey
from scaler.grpc_server import metric_name
from scaler.proto import externalscaler_pb2 as pb
from scaler.proto import externalscaler_pb2_grpc as pb_grpc
from tests.queue_proxy.conftest import queue_proxy
from tests.scaler.conftest import run_sync, series
from tests.support import KAPA, free_port, running, wait_for_http

#: Stable window 6 s, panic 3 s, 2 concurrent requests per pod: 5 in flight -> ceil(5 / 2) = 3 pods.
FAST = {
    contract.knative_annotation("window"): "6s",
    contract.knative_annotation("panic-window-percentage"): "50",
    contract.knative_annotation("target"): "2",
    contract.knative_annotation("target-utilization-percentage"): "100",
}
HELLO = ServiceKey("default", "hello")
IN_FLIGHT = 5
SLEEP_MS = 400


@dataclass
class Stack:
    queue_proxy_ports: list[int]
    http_url: str
    grpc_address: str
    log: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Sample app, two queue-proxies for default/hello, Prometheus, and `kapa scaler` over them."""
    work = tmp_path_factory.mktemp("scaler-process")
    app_port = free_port()
    services = {
        "services": [
            {"name": "hello", "annotations": FAST},
            {"name": "sleepy", "annotations": {**FAST, contract.knative_annotation("initial-scale"): "0"}},
            {"name": "broken", "annotations": {contract.knative_annotation("max-scale"): "-3"}},
        ]
    }
    (work / "services.yaml").write_text(yaml.safe_dump(services))
    (work / "config.yaml").write_text(yaml.safe_dump({"allow-zero-initial-scale": "true"}))
    with running([*KAPA, "sample-app", "--port", str(app_port)], log=work / "app.log"):
        wait_for_http(f"http://127.0.0.1:{app_port}{contract.READY_PATH}")
        pod = {contract.ENV_SERVING_NAMESPACE: HELLO.namespace, contract.ENV_SERVING_SERVICE: HELLO.name}
        with queue_proxy(work, app_port, **pod) as first, queue_proxy(work, app_port, **pod) as second:
            proxies = (first, second)
            prometheus = PrometheusServer(
                workdir=work / "prometheus", targets=[ScrapeTarget(f"127.0.0.1:{p.metrics_port}") for p in proxies]
            )
            run_sync(prometheus.start())
            http_port, grpc_port = free_port(), free_port()
            command = [
                *KAPA, "scaler", "--services", str(work / "services.yaml"), "--config", str(work / "config.yaml"),
                "--prometheus-url", prometheus.url, "--host", "127.0.0.1",
                "--http-port", str(http_port), "--grpc-port", str(grpc_port),
            ]  # fmt: skip
            try:
                with running(command, log=work / "scaler.log"):
                    wait_for_http(f"http://127.0.0.1:{http_port}/readyz", timeout_s=15)
                    yield Stack([p.port for p in proxies], f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}",
                                work / "scaler.log")  # fmt: skip
            finally:
                run_sync(prometheus.close())


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.grpc_address) as channel:
        yield channel


def ref(name: str, namespace: str = "default", metadata: dict[str, str] | None = None) -> pb.ScaledObjectRef:
    return pb.ScaledObjectRef(name=name, namespace=namespace, scalerMetadata=metadata or {})


async def _load(ports: list[int], in_flight: int, until: float) -> int:
    """Keep `in_flight` requests of SLEEP_MS in flight, spread over the queue-proxies, until `until`."""
    done = 0

    async def worker(index: int) -> None:
        nonlocal done
        url = f"http://127.0.0.1:{ports[index % len(ports)]}/?sleep={SLEEP_MS}"
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < until:
                async with session.get(url) as response:
                    assert response.status == 200, await response.text()
                    done += 1

    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    return done


async def _explain(session: aiohttp.ClientSession, url: str, service: str) -> dict[str, object]:
    async with session.get(url + contract.SCALER_EXPLAIN_PATH.format(namespace="default", name=service)) as response:
        assert response.status == 200
        return await response.json()


async def test_known_concurrency_through_queue_proxies_drives_decision_and_grpc(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    stub = pb_grpc.ExternalScalerStub(channel)
    load = asyncio.create_task(_load(stack.queue_proxy_ports, IN_FLIGHT, time.monotonic() + 30))
    latest: dict[str, object] = {}
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                latest = (await _explain(session, stack.http_url, "hello"))["decisions"][0]  # type: ignore[index]
                stable = latest["stable_value"]
                if stable is not None and abs(stable - IN_FLIGHT) < 0.5 and latest["desired_pods"] == 3:  # type: ignore[operator]
                    break
            else:
                pytest.fail(f"the scaler never observed {IN_FLIGHT} in flight: last decision {latest}")
            assert latest["ready_pods"] == 2 and not latest["stale"]

            # KEDA's view: active, metric value = desired pods, AverageValue target 1.
            assert (await stub.IsActive(ref("hello"))).result is True
            spec = await stub.GetMetricSpec(ref("hello"))
            assert [(s.metricName, s.targetSize, s.targetSizeFloat) for s in spec.metricSpecs] == [
                (metric_name(HELLO), 1, 1.0)
            ]
            metrics = await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("hello"), metricName="s0-x"))
            (value,) = metrics.metricValues
            assert (value.metricName, value.metricValue, value.metricValueFloat) == ("s0-x", 3, 3.0)
            # scalerMetadata names the service when the ScaledObject is called differently.
            other = await stub.GetMetrics(
                pb.GetMetricsRequest(scaledObjectRef=ref("web", "prod", {"service": "hello", "namespace": "default"}))
            )
            assert other.metricValues[0].metricValue == 3

            async with session.get(stack.http_url + contract.METRICS_PATH) as response:
                exposition = await response.text()
            assert f"{series(contract.SCALER_DESIRED_PODS, HELLO)} 3.0" in exposition
            assert f"{series(contract.SCALER_READY_PODS, HELLO)} 2.0" in exposition
            async with session.get(f"{stack.http_url}/v1/decisions") as response:
                compact = await response.json()
            assert compact["services"]["default/hello"]["desired_pods"] == 3
    finally:
        assert await load > 0

    words = subprocess.run(
        [*KAPA, "explain", "default/hello", "--scaler", stack.http_url], capture_output=True, text=True, timeout=20
    )
    assert words.returncode == 0, words.stderr
    assert "default/hello: metric concurrency, target 2 per pod" in words.stdout
    assert "pods" in words.stdout and "stable window" in words.stdout
    as_json = subprocess.run(
        [*KAPA, "explain", "default/hello", "--scaler", stack.http_url, "--json"], capture_output=True, text=True, timeout=20
    )
    assert json.loads(as_json.stdout)["service"] == "default/hello"


async def test_stream_is_active_sends_true_right_after_a_poke(stack: Stack, channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.ExternalScalerStub(channel)
    assert (await stub.IsActive(ref("sleepy"))).result is False
    stream = stub.StreamIsActive(ref("sleepy"))
    first = await asyncio.wait_for(stream.read(), 5)
    assert first.result is False
    async with aiohttp.ClientSession() as session:
        poked_at = time.monotonic()
        async with session.post(f"{stack.http_url}/v1/poke/default/sleepy") as response:
            assert response.status == 202
            assert (await response.json())["desired_pods"] == 1
        second = await asyncio.wait_for(stream.read(), 2)
        latency_s = time.monotonic() - poked_at
    assert second.result is True and latency_s < 1.0
    stream.cancel()
    assert (await stub.IsActive(ref("sleepy"))).result is True


async def test_unknown_service_and_bad_annotation(stack: Stack, channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.ExternalScalerStub(channel)
    for call in (
        stub.IsActive(ref("nobody")),
        stub.GetMetricSpec(ref("nobody")),
        stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("nobody"))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert "default/nobody" in (raised.value.details() or "")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.http_url}/v1/poke/default/nobody") as response:
            assert response.status == 404 and "default/nobody" in (await response.json())["error"]
        explained = await _explain(session, stack.http_url, "broken")
    assert explained["config"]["max_scale"] == 0  # type: ignore[index]  # the default, not -3
    log = stack.log.read_text()
    bad = [line for line in log.splitlines() if "invalid autoscaling setting" in line]
    assert len(bad) == 1, log
    assert "service=default/broken" in bad[0] and f"key={contract.knative_annotation('max-scale')}" in bad[0]
    missing = subprocess.run([*KAPA, "explain", "default/nobody", "--scaler", stack.http_url],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
    assert missing.returncode == 1 and "default/nobody" in missing.stderr


async def test_services_file_is_followed_while_running(stack: Stack) -> None:
    services_file = stack.log.parent / "services.yaml"
    document = yaml.safe_load(services_file.read_text())
    document["services"].append({"name": "newcomer", "namespace": "team-b"})
    services_file.write_text(yaml.safe_dump(document))
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 10
        while True:
            async with session.get(f"{stack.http_url}/v1/decisions") as response:
                services = (await response.json())["services"]
            if services.get("team-b/newcomer") is not None:
                break
            assert time.monotonic() < deadline, f"team-b/newcomer never decided: {sorted(services)}"
            await asyncio.sleep(0.5)
    assert services["team-b/newcomer"]["desired_pods"] == 1  # no pods, no traffic: initial-scale 1


@pytest.mark.parametrize("method", ["IsActive", "StreamIsActive", "GetMetricSpec", "GetMetrics"])
async def test_corrupt_protobuf_is_refused_with_one_log_line(
    stack: Stack, channel: grpc.aio.Channel, method: str
) -> None:
    """Bytes that are not the method's message: INVALID_ARGUMENT and one warning, no traceback; the port
    keeps serving."""
    path = f"/externalscaler.ExternalScaler/{method}"
    raw = {"request_serializer": bytes, "response_deserializer": bytes}
    call = (channel.unary_stream(path, **raw) if method == "StreamIsActive" else channel.unary_unary(path, **raw))
    before = stack.log.read_text()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        response = call(b"\xff\xff\xff\xff")
        await (response.read() if method == "StreamIsActive" else response)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
    assert method in (raised.value.details() or "")
    stub = pb_grpc.ExternalScalerStub(channel)
    assert (await stub.IsActive(ref("hello"))).result is True
    added = stack.log.read_text()[len(before):]
    refused = [line for line in added.splitlines() if "malformed gRPC request refused" in line]
    assert len(refused) == 1 and path in refused[0], added
    assert "Traceback" not in added, added
