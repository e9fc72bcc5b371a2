"""Configuration from the environment: Knative's names and defaults; a bad value names its variable."""

from __future__ import annotations

import json
import subprocess

import pytest

from kapa.core import contract
from queue_proxy.config import Config, ConfigError, ProbeConfig
from tests.support import KAPA


def test_defaults_are_knatives() -> None:
    config = Config.from_env({})
    assert (config.serving_port, config.user_port) == (contract.QUEUE_SERVING_PORT, contract.USER_PORT)
    assert config.container_concurrency == contract.DEFAULT_CONTAINER_CONCURRENCY
    assert config.revision_timeout_s == contract.DEFAULT_REVISION_TIMEOUT_SECONDS
    assert config.drain_s == contract.DEFAULT_DRAIN_SECONDS
    assert (config.metrics_port, config.admin_port) == (contract.QUEUE_METRICS_PORT, contract.QUEUE_ADMIN_PORT)
    assert (config.bind_address, config.upstream_host) == (contract.DEFAULT_BIND_ADDRESS, contract.DEFAULT_UPSTREAM_HOST)
    assert config.readiness_probe == ProbeConfig(kind="tcp", host="127.0.0.1", port=contract.USER_PORT)
    assert config.queue_depth == 0
    assert config.header_read_timeout_s == contract.DEFAULT_HEADER_READ_TIMEOUT_SECONDS
    assert config.idle_timeout_s == contract.DEFAULT_IDLE_TIMEOUT_SECONDS


def test_a_full_environment() -> None:
    probe = {"httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "X-A", "value": "b"}]},
             "periodSeconds": 2, "failureThreshold": 5}
    config = Config.from_env({
        contract.ENV_USER_PORT: "9000", contract.ENV_CONTAINER_CONCURRENCY: "4",
        contract.ENV_REVISION_TIMEOUT_SECONDS: "2.5", contract.ENV_SERVING_NAMESPACE: "shop",
        contract.ENV_SERVING_SERVICE: "cart", contract.ENV_SERVING_READINESS_PROBE: json.dumps(probe),
    })
    assert config.queue_depth == 4 * contract.QUEUE_DEPTH_PER_SLOT
    assert (config.namespace, config.service, config.revision_timeout_s) == ("shop", "cart", 2.5)
    assert config.readiness_probe == ProbeConfig(
        kind="http", host="127.0.0.1", port=9000, path="/healthz", headers=(("X-A", "b"),), period_s=2.0,
        failure_threshold=5,
    )


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        (contract.ENV_QUEUE_SERVING_PORT, "http", "not an integer"),
        (contract.ENV_USER_PORT, "70000", "not a TCP port"),
        (contract.ENV_CONTAINER_CONCURRENCY, "-1", "at least 0"),
        (contract.ENV_REVISION_TIMEOUT_SECONDS, "0", "positive"),
        (contract.ENV_REVISION_TIMEOUT_SECONDS, "5m", "not a number"),
        (contract.ENV_DRAIN_SECONDS, "-3", ">= 0"),
        (contract.ENV_HEADER_READ_TIMEOUT_SECONDS, "0", "positive"),
        (contract.ENV_IDLE_TIMEOUT_SECONDS, "never", "not a number"),
        (contract.ENV_BIND_ADDRESS, "localhost", "not an IP address"),
        (contract.ENV_SERVING_READINESS_PROBE, "{not json", "not JSON"),
        (contract.ENV_SERVING_READINESS_PROBE, '{"exec": {"command": ["true"]}}', "httpGet or tcpSocket"),
        (contract.ENV_SERVING_READINESS_PROBE, '{"httpGet": {"path": "x"}}', "must start with /"),
        (contract.ENV_ADMIN_PORT, str(contract.QUEUE_METRICS_PORT), "same port"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_env({variable: value})
    assert raised.value.variable == variable
    assert problem in str(raised.value) and variable in str(raised.value)


def test_the_command_exits_2_with_the_variable_named() -> None:
    result = subprocess.run(
        [*KAPA, "queue-proxy"], env={contract.ENV_CONTAINER_CONCURRENCY: "lots", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "CONTAINER_CONCURRENCY='lots'" in result.stderr and "not an integer" in result.stderr
