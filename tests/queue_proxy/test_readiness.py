"""Readiness: probed aggressively until the app is first ready, reported on the admin port and, for the
activator, on the serving port with the probe header; liveness is separate."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from kapa.core import contract
from tests.queue_proxy.conftest import Proxy, app_process, get_json, queue_proxy
from tests.support import free_port


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _probe_via_serving_port(proxy: Proxy) -> int:
    return _status(proxy.url + "/anything", {contract.PROBE_HEADER: contract.PROBE_HEADER_VALUE})


def _wait_ready(proxy: Proxy, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if _status(f"http://127.0.0.1:{proxy.admin_port}{contract.READY_PATH}") == 200:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"not ready within {timeout_s}s")


def test_tcp_readiness_follows_the_app_and_the_probe_header_is_answered_locally(tmp_path: Path) -> None:
    app_port = free_port()
    with queue_proxy(tmp_path, app_port, wait_ready=False) as proxy:
        admin = f"http://127.0.0.1:{proxy.admin_port}"
        assert _status(admin + contract.READY_PATH) == 503
        assert _status(admin + contract.LIVE_PATH) == 200
        assert _probe_via_serving_port(proxy) == 503
        with app_process(app_port):
            # Probed every 50 ms until first ready.
            assert _wait_ready(proxy, 2.0) < 0.5
            assert _probe_via_serving_port(proxy) == 200
            # The probe never reached the app and was not counted as a request.
            stats = get_json(f"http://127.0.0.1:{app_port}/stats")
            assert stats["total"] == 0  # type: ignore[index]
            assert proxy.metric(contract.REQUESTS) == 0


def test_http_readiness_probe_uses_the_configured_path(tmp_path: Path) -> None:
    app_port = free_port()
    probe = json.dumps({"httpGet": {"path": "/ready", "port": app_port}, "periodSeconds": 1})
    with app_process(app_port), queue_proxy(tmp_path, app_port, wait_ready=False, SERVING_READINESS_PROBE=probe) as proxy:
        admin = f"http://127.0.0.1:{proxy.admin_port}{contract.READY_PATH}"
        time.sleep(0.3)
        assert _status(admin) == 503  # the app listens, but its /ready says 503
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{app_port}/make-ready", method="POST"), timeout=5)
        assert _wait_ready(proxy, 2.0) < 0.5
