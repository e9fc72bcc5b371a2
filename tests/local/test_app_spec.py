"""The `local:` section of a services file: what runs a replica, and errors that name service and key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from kapa.local.app_spec import AppSpecError, app_spec
from kapa.local.up import default_services_text
from kapa.core.services import load_services, parse_services

REPO = Path(__file__).resolve().parents[2]


def _entry(local: object) -> object:
    return parse_services({"services": [{"name": "hello", "local": local}]})[0]


def test_command_port_and_probe() -> None:
    spec = app_spec(_entry({"command": ["{python}", "-m", "app", "--port={port}"], "portEnv": "PORT",
                            "readinessPath": "/ready", "env": {"A": 1}}))
    assert spec.argv(8123) == [sys.executable, "-m", "app", "--port=8123"]
    assert spec.environment(8123) == {"A": "1", "PORT": "8123"}
    assert json.loads(spec.readiness_probe(8123)) == {"httpGet": {"path": "/ready", "port": 8123}}


def test_tcp_probe_without_readiness_path() -> None:
    spec = app_spec(_entry({"command": ["app"], "portEnv": "PORT"}))
    assert json.loads(spec.readiness_probe(9000)) == {"tcpSocket": {"port": 9000}}


@pytest.mark.parametrize(
    ("local", "message"),
    [
        ({}, "local.command: expected a non-empty list of strings"),
        ({"command": "app --port {port}"}, "local.command: expected a non-empty list"),
        ({"command": ["app"]}, "put {port} in command or set portEnv"),
        ({"command": ["app", "{port}"], "port": 8080}, "unknown key(s) port (each replica gets its own port"),
        ({"command": ["app", "{port}"], "readinessPath": "ready"}, "local.readinessPath: expected a path"),
        ({"command": ["app", "{port}"], "env": ["A=1"]}, "local.env: expected a mapping"),
        ({"command": ["app"], "portEnv": ""}, "local.portEnv: expected an environment variable name"),
    ],
)
def test_errors_name_service_and_key(local: dict[str, object], message: str) -> None:
    with pytest.raises(AppSpecError) as caught:
        app_spec(_entry(local))
    assert "service default/hello" in str(caught.value) and message in str(caught.value)


def test_default_is_the_shipped_example() -> None:
    """`kapa up` with no file runs examples/hello.yaml: the sample app as default/hello with target 10."""
    assert default_services_text() == (REPO / "examples" / "hello.yaml").read_text()
    (entry,) = parse_services(yaml.safe_load(default_services_text()))
    assert str(entry.spec.key) == "default/hello"
    assert entry.spec.annotations["autoscaling.knative.dev/target"] == "10"
    assert app_spec(entry).argv(1234)[-2:] == ["--port", "1234"]


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda path: path.name)
def test_every_example_is_valid_for_kapa_up(path: Path) -> None:
    entries = load_services(path)
    assert entries and all(app_spec(entry).command for entry in entries)
