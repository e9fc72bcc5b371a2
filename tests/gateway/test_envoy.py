"""A real Envoy, configured over ADS by the gateway, routing real requests to loopback upstreams."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import aiohttp
import pytest

from kapa.core import contract
from kapa.core.services import ServiceKey

from gateway.bootstrap import BootstrapConfig
from gateway.launcher import EnvoyProcess
from gateway.resources import ROUTE_TYPE, ListenerConfig, build_resources, service_cluster_name
from tests.gateway.conftest import HOST, KEY, Rig, eventually
from tests.support import free_port


def answered_by(rig: Rig, name: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await rig.get() == (200, name)

    return check


async def test_routes_follow_the_mode(rig: Rig) -> None:
    assert await rig.get() == (200, "activator")
    assert await rig.get(host=f"{HOST}:8081") == (200, "activator")  # the port in Host is ignored
    assert await rig.get(host="svc.ns.svc.cluster.local") == (200, "activator")
    assert (await rig.get(host="other.ns"))[0] == 404

    rig.gateway.set_service(KEY, contract.MODE_SERVE, [rig.pods["pod-a"].endpoint])
    to_serve = await eventually(answered_by(rig, "pod-a"), what="serve mode")
    assert (await rig.responders(20)) == Counter({"pod-a": 20})

    rig.gateway.set_mode(KEY, contract.MODE_PROXY)
    to_proxy = await eventually(answered_by(rig, "activator"), what="proxy mode")
    assert (await rig.responders(20)) == Counter({"activator": 20})
    print(f"switch took effect after {to_serve * 1000:.0f} ms (serve), {to_proxy * 1000:.0f} ms (proxy)")


async def test_switch_proxy_serve_proxy_under_load_loses_nothing(rig: Rig) -> None:
    """20 clients for ~6 s, each request held 10 ms upstream so switches happen with requests in flight."""
    pods = [rig.pods["pod-a"].endpoint, rig.pods["pod-b"].endpoint]
    rig.gateway.set_endpoints(KEY, pods)
    results: Counter[str] = Counter()
    url = f"http://127.0.0.1:{rig.listener_port}/work?delay_ms=10"
    deadline = time.monotonic() + 6.0

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            try:
                async with session.get(url, headers={"Host": HOST}) as response:
                    body = await response.text()
                    results[body if response.status == 200 else f"failed {response.status} {body[:60]}"] += 1
            except aiohttp.ClientError as error:
                results[f"failed {error!r}"] += 1

    async def switcher() -> list[tuple[str, int]]:
        phases = []
        for mode in (contract.MODE_SERVE, contract.MODE_PROXY):
            await asyncio.sleep(2.0)
            phases.append((mode, sum(results.values())))
            rig.gateway.set_mode(KEY, mode)  # type: ignore[arg-type]
        return phases

    connector = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        *_, phases = await asyncio.gather(*(client(session) for _ in range(20)), switcher())

    failures = {kind: count for kind, count in results.items() if kind.startswith("failed")}
    total = sum(results.values())
    print(f"{total} requests in 6 s across switches {phases}: {dict(results)}")
    assert failures == {}
    assert total > 300, "the load loop did not run"
    # Every phase really ran: the activator before and after, the pods in between.
    assert results["activator"] > 0 and results["pod-a"] > 0 and results["pod-b"] > 0
    assert rig.pods["pod-a"].in_flight == rig.pods["pod-b"].in_flight == rig.activator.in_flight == 0


async def test_endpoint_changes_take_effect(rig: Rig) -> None:
    a, b, c = (rig.pods[name].endpoint for name in ("pod-a", "pod-b", "pod-c"))
    rig.gateway.set_service(KEY, contract.MODE_SERVE, [a, b])

    async def both_serve() -> bool:
        return set(await rig.responders(10)) == {"pod-a", "pod-b"}

    await eventually(both_serve, what="two pods serving")

    rig.gateway.set_endpoints(KEY, [a])

    async def only_a() -> bool:
        return await rig.responders(10) == Counter({"pod-a": 10})

    await eventually(only_a, what="pod-b removed")
    served_by_b = rig.pods["pod-b"].served
    assert await rig.responders(40) == Counter({"pod-a": 40})
    assert rig.pods["pod-b"].served == served_by_b, "a removed endpoint still received traffic"

    rig.gateway.set_endpoints(KEY, [a, c])

    async def c_serves() -> bool:
        return "pod-c" in await rig.responders(10)

    await eventually(c_serves, what="pod-c added")


async def test_nack_keeps_the_last_good_config(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.ads")
    rig.gateway.set_service(KEY, contract.MODE_SERVE, [rig.pods["pod-a"].endpoint])
    await eventually(answered_by(rig, "pod-a"), what="serve mode")
    good = rig.gateway.cache.snapshot()[ROUTE_TYPE].version
    assert await rig.route_version_in_envoy() == good

    # A route table Envoy validates and rejects at runtime: two virtual hosts claiming the same domain.
    # The routing model refuses to build one (RoutingError), so it is put into the cache directly.
    resources = build_resources(rig.gateway.state, ListenerConfig("127.0.0.1", rig.listener_port))
    bad_routes = resources[ROUTE_TYPE]["kapa_routes"]
    duplicate = bad_routes.virtual_hosts.add()
    duplicate.CopyFrom(bad_routes.virtual_hosts[0])
    duplicate.name = "duplicate"
    assert rig.gateway.cache.set_resources({ROUTE_TYPE: resources[ROUTE_TYPE]}) == [ROUTE_TYPE]
    bad = rig.gateway.cache.snapshot()[ROUTE_TYPE].version

    async def rejected() -> bool:
        status = rig.gateway.xds_status().get("kapa-gateway", {}).get(ROUTE_TYPE)
        return status is not None and status.rejected_version == bad

    await eventually(rejected, what="NACK")
    status = rig.gateway.xds_status()["kapa-gateway"][ROUTE_TYPE]
    assert status.acked_version == good
    assert "Duplicate entry of domain" in status.reject_reason, status.reject_reason

    (nack_log,) = [r for r in caplog.records if r.getMessage() == "envoy rejected config"]
    fields = nack_log.kapa_fields  # type: ignore[attr-defined]
    assert nack_log.levelno == logging.WARNING
    assert (fields["rejected_version"], fields["version_in_force"]) == (bad, good)
    assert "Duplicate entry of domain" in fields["reason"]

    # Envoy still runs the last good table and traffic flows on it.
    assert await rig.route_version_in_envoy() == good
    assert await rig.responders(20) == Counter({"pod-a": 20})
    # The rejected version was sent once, not again and again.
    await asyncio.sleep(0.3)
    sent_bad = [
        r for r in caplog.records
        if r.getMessage() == "discovery response" and r.kapa_fields["version"] == bad  # type: ignore[attr-defined]
    ]
    assert len(sent_bad) == 1

    # The next real change supersedes the bad version and is accepted.
    rig.gateway.set_mode(KEY, contract.MODE_PROXY)
    fixed = rig.gateway.cache.snapshot()[ROUTE_TYPE].version
    assert fixed not in {good, bad}

    async def accepted() -> bool:
        return await rig.route_version_in_envoy() == fixed

    await eventually(accepted, what="good config after the NACK")
    assert rig.gateway.xds_status()["kapa-gateway"][ROUTE_TYPE].acked_version == fixed
    assert await rig.responders(10) == Counter({"activator": 10})


async def test_every_connected_envoy_gets_each_change(rig: Rig) -> None:
    xds_port = int(rig.gateway.xds.address.rsplit(":", 1)[1])
    second = EnvoyProcess(BootstrapConfig(xds_port=xds_port, admin_port=free_port(), node_id="second"))
    async with second:
        assert set(rig.gateway.xds_status()) == {"kapa-gateway", "second"}
        for mode in (contract.MODE_SERVE, contract.MODE_PROXY, contract.MODE_SERVE):
            rig.gateway.set_service(KEY, mode, [rig.pods["pod-a"].endpoint])  # type: ignore[arg-type]
            version = rig.gateway.cache.snapshot()[ROUTE_TYPE].version

            async def both_run_it() -> bool:
                status = rig.gateway.xds_status()
                return all(status[node][ROUTE_TYPE].acked_version == version for node in ("kapa-gateway", "second"))

            await eventually(both_run_it, what=f"both Envoys on route version {version}")
        async with rig.session.get(second.admin_url + "/config_dump?resource=dynamic_route_configs") as response:
            (config,) = (await response.json())["configs"]
        assert config["version_info"] == version

    async def forgotten() -> bool:  # the stopped Envoy's stream is closed and dropped
        return set(rig.gateway.xds_status()) == {"kapa-gateway"}

    await eventually(forgotten, what="stream of the stopped Envoy dropped")


async def test_requests_in_flight_finish_when_their_pod_is_removed_or_the_mode_switches(rig: Rig) -> None:
    a, b = rig.pods["pod-a"].endpoint, rig.pods["pod-b"].endpoint
    rig.gateway.set_service(KEY, contract.MODE_SERVE, [a])
    await eventually(answered_by(rig, "pod-a"), what="serve mode")
    slow_on_a = asyncio.create_task(rig.get(path="/slow?delay_ms=1000"))
    await eventually(lambda: rig.pods["pod-a"].in_flight == 1, what="slow request at pod-a")
    rig.gateway.set_service(KEY, contract.MODE_SERVE, [b])  # pod-a leaves EDS while serving the slow request
    await eventually(answered_by(rig, "pod-b"), what="pod-b serving")
    slow_on_b = asyncio.create_task(rig.get(path="/slow?delay_ms=1000"))
    await eventually(lambda: rig.pods["pod-b"].in_flight == 1, what="slow request at pod-b")
    rig.gateway.set_mode(KEY, contract.MODE_PROXY)  # the route leaves pod-b while it serves the other one
    await eventually(answered_by(rig, "activator"), what="proxy mode")
    assert await slow_on_a == (200, "pod-a")
    assert await slow_on_b == (200, "pod-b")


async def test_envoy_keeps_serving_while_the_xds_server_is_away(rig: Rig) -> None:
    rig.gateway.set_service(KEY, contract.MODE_SERVE, [rig.pods["pod-a"].endpoint])
    await eventually(answered_by(rig, "pod-a"), what="serve mode")
    await rig.gateway.stop()
    assert await rig.responders(20) == Counter({"pod-a": 20})  # last config stays in force
    # The control plane back on its port, with a decision made while it was away: Envoy reconnects and obeys.
    rig.gateway.set_mode(KEY, contract.MODE_PROXY)
    await rig.gateway.start()
    await eventually(answered_by(rig, "activator"), timeout_s=15, what="reconnect to the xDS server")


async def test_envoy_keepalive_pings_do_not_break_the_xds_stream(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """An idle ADS stream pinged every 0.1 s stays up (gRPC's defaults would GOAWAY it as abusive)."""
    caplog.set_level(logging.INFO, logger="gateway.ads")
    xds_port = int(rig.gateway.xds.address.rsplit(":", 1)[1])
    config = BootstrapConfig(xds_port=xds_port, admin_port=free_port(), node_id="pinger", keepalive_interval_s=0.1)
    async with EnvoyProcess(config) as pinger:
        await asyncio.sleep(2.0)
        stats = await rig.session.get(pinger.admin_url + "/stats?filter=cluster.kapa_xds.upstream_cx_total")
        text = await stats.text()
    opened = [r for r in caplog.records if r.getMessage() == "ads stream opened"]
    assert len(opened) == 1, f"the pinging Envoy reconnected: {len(opened)} streams; {text}"
    assert "upstream_cx_total: 1" in text


async def test_an_endpoint_change_sends_one_service_with_delta_every_service_with_sotw(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    other = ServiceKey("ns", "other")
    rig.gateway.set_service(other, contract.MODE_SERVE, [rig.pods["pod-b"].endpoint])
    rig.gateway.set_service(KEY, contract.MODE_SERVE, [rig.pods["pod-a"].endpoint])
    await eventually(answered_by(rig, "pod-a"), what="serve mode")
    caplog.set_level(logging.DEBUG, logger="gateway.ads")
    rig.gateway.set_endpoints(KEY, [rig.pods["pod-c"].endpoint])
    await eventually(answered_by(rig, "pod-c"), what="new endpoint")
    (sent,) = [
        r.kapa_fields for r in caplog.records  # type: ignore[attr-defined]
        if r.getMessage() == "discovery response" and r.kapa_fields["type"] == "ClusterLoadAssignment"
    ]
    assert sent["resources"] == {"delta": 1, "sotw": 2}[rig.protocol]


async def test_a_removed_service_leaves_envoy(rig: Rig) -> None:
    rig.gateway.set_service(KEY, contract.MODE_SERVE, [rig.pods["pod-a"].endpoint])
    await eventually(answered_by(rig, "pod-a"), what="serve mode")
    rig.gateway.remove_service(KEY)

    async def gone() -> bool:
        dump = await rig.admin_json("/config_dump?resource=dynamic_active_clusters")
        names = {config["cluster"]["name"] for config in dump.get("configs", [])}
        return service_cluster_name(KEY) not in names and (await rig.get())[0] == 404

    await eventually(gone, what="service removed from Envoy")
