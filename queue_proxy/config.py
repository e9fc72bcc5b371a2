"""The queue-proxy's configuration, read once from the environment into frozen values.

Variable names are Knative's where Knative has one, so a pod spec written for Knative's queue-proxy
carries over. An invalid value is an error naming the variable; nothing falls back silently.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kapa.core import contract

#: Readiness probing: every 50 ms until the app first answers (Knative's aggressive probing), then at the
#: probe's periodSeconds (default 1 s) to notice the app going away.
FIRST_READY_PROBE_INTERVAL_S = 0.05
DEFAULT_PROBE_PERIOD_S = 1.0
DEFAULT_PROBE_TIMEOUT_S = 1.0
#: Timeout of each aggressive probe (Knative: 100 ms).
FIRST_READY_PROBE_TIMEOUT_S = 0.1


class ConfigError(ValueError):
    """An environment variable holds a value the queue-proxy cannot use."""

    def __init__(self, variable: str, value: str, problem: str) -> None:
        super().__init__(f"{variable}={value!r}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class ProbeConfig:
    """How to tell the app is ready: a TCP connect, or an HTTP GET answered with 2xx/3xx."""

    kind: str  # "tcp" or "http"
    host: str
    port: int
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    period_s: float = DEFAULT_PROBE_PERIOD_S
    timeout_s: float = DEFAULT_PROBE_TIMEOUT_S
    #: Consecutive failures, once ready, before the app counts as not ready.
    failure_threshold: int = 3


@dataclass(frozen=True)
class Config:
    serving_port: int
    user_port: int
    container_concurrency: int
    revision_timeout_s: float
    namespace: str
    service: str
    readiness_probe: ProbeConfig
    metrics_port: int
    admin_port: int
    drain_s: float
    bind_address: str
    upstream_host: str
    #: Client connections: a request head must be complete within this long (else 408); a keep-alive
    #: connection idle this long is closed.
    header_read_timeout_s: float = float(contract.DEFAULT_HEADER_READ_TIMEOUT_SECONDS)
    idle_timeout_s: float = float(contract.DEFAULT_IDLE_TIMEOUT_SECONDS)

    @property
    def queue_depth(self) -> int:
        """Requests that may wait for a slot when the concurrency is limited (Knative's breaker: 10 per slot)."""
        return self.container_concurrency * contract.QUEUE_DEPTH_PER_SLOT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Parse and check every variable; raises ConfigError naming the first bad one."""
        reader = _Reader(env)
        upstream_host = reader.text(contract.ENV_UPSTREAM_HOST, contract.DEFAULT_UPSTREAM_HOST)
        user_port = reader.port(contract.ENV_USER_PORT, contract.USER_PORT)
        config = cls(
            serving_port=reader.port(contract.ENV_QUEUE_SERVING_PORT, contract.QUEUE_SERVING_PORT),
            user_port=user_port,
            container_concurrency=reader.integer(
                contract.ENV_CONTAINER_CONCURRENCY, contract.DEFAULT_CONTAINER_CONCURRENCY, minimum=0
            ),
            revision_timeout_s=reader.seconds(
                contract.ENV_REVISION_TIMEOUT_SECONDS, contract.DEFAULT_REVISION_TIMEOUT_SECONDS, positive=True
            ),
            namespace=reader.text(contract.ENV_SERVING_NAMESPACE, "default"),
            service=reader.text(contract.ENV_SERVING_SERVICE, ""),
            readiness_probe=_probe(env.get(contract.ENV_SERVING_READINESS_PROBE, ""), upstream_host, user_port),
            metrics_port=reader.port(contract.ENV_METRICS_PORT, contract.QUEUE_METRICS_PORT),
            admin_port=reader.port(contract.ENV_ADMIN_PORT, contract.QUEUE_ADMIN_PORT),
            drain_s=reader.seconds(contract.ENV_DRAIN_SECONDS, contract.DEFAULT_DRAIN_SECONDS, positive=False),
            bind_address=reader.address(contract.ENV_BIND_ADDRESS, contract.DEFAULT_BIND_ADDRESS),
            upstream_host=upstream_host,
            header_read_timeout_s=reader.seconds(
                contract.ENV_HEADER_READ_TIMEOUT_SECONDS, contract.DEFAULT_HEADER_READ_TIMEOUT_SECONDS, positive=True
            ),
            idle_timeout_s=reader.seconds(
                contract.ENV_IDLE_TIMEOUT_SECONDS, contract.DEFAULT_IDLE_TIMEOUT_SECONDS, positive=True
            ),
        )
        ports = {
            contract.ENV_QUEUE_SERVING_PORT: config.serving_port,
            contract.ENV_METRICS_PORT: config.metrics_port,
            contract.ENV_ADMIN_PORT: config.admin_port,
        }
        seen: dict[int, str] = {}
        for variable, port in ports.items():
            if port in seen:
                raise ConfigError(variable, str(port), f"the same port as {seen[port]}")
            seen[port] = variable
        return config


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _raw(self, variable: str) -> str | None:
        value = self._env.get(variable)
        return None if value is None or value.strip() == "" else value.strip()

    def text(self, variable: str, default: str) -> str:
        return self._raw(variable) or default

    def integer(self, variable: str, default: int, minimum: int) -> int:
        raw = self._raw(variable)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(variable, raw, "not an integer") from None
        if value < minimum:
            raise ConfigError(variable, raw, f"must be at least {minimum}")
        return value

    def port(self, variable: str, default: int) -> int:
        value = self.integer(variable, default, minimum=1)
        if value > 65535:
            raise ConfigError(variable, str(value), "not a TCP port (1-65535)")
        return value

    def seconds(self, variable: str, default: float, positive: bool) -> float:
        raw = self._raw(variable)
        if raw is None:
            return float(default)
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(variable, raw, "not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ConfigError(variable, raw, "must be a positive number of seconds" if positive else "must be >= 0")
        return value

    def address(self, variable: str, default: str) -> str:
        raw = self.text(variable, default)
        try:
            ipaddress.ip_address(raw)
        except ValueError:
            raise ConfigError(variable, raw, "not an IP address") from None
        return raw


def _probe(raw: str, host: str, user_port: int) -> ProbeConfig:
    """Parse a Kubernetes probe (JSON, as Knative passes it); empty means TCP on the user port."""
    variable = contract.ENV_SERVING_READINESS_PROBE
    if not raw.strip():
        return ProbeConfig(kind="tcp", host=host, port=user_port)
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(variable, raw, f"not JSON ({error.msg})") from None
    if not isinstance(spec, dict):
        raise ConfigError(variable, raw, "expected a JSON object (a Kubernetes probe)")

    def number(key: str, default: float) -> float:
        value = spec.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(variable, raw, f"{key} must be a non-negative number")
        return float(value) or default  # 0 means "Kubernetes default" in Knative's probe passing

    common: dict[str, Any] = {
        "period_s": number("periodSeconds", DEFAULT_PROBE_PERIOD_S),
        "timeout_s": number("timeoutSeconds", DEFAULT_PROBE_TIMEOUT_S),
        "failure_threshold": int(number("failureThreshold", 3)),
    }
    if "httpGet" in spec:
        action = spec["httpGet"]
        kind = "http"
    elif "tcpSocket" in spec:
        action = spec["tcpSocket"]
        kind = "tcp"
    else:
        raise ConfigError(variable, raw, "expected httpGet or tcpSocket (exec and grpc probes are not supported)")
    if not isinstance(action, dict):
        raise ConfigError(variable, raw, f"{'httpGet' if kind == 'http' else 'tcpSocket'} must be an object")
    port = action.get("port", user_port)
    # A named port ("http") or 0 refers to the app's container port: the user port.
    if isinstance(port, str):
        port = int(port) if port.isdigit() else user_port
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(variable, raw, "port must be a TCP port or a port name")
    probe_host = action.get("host") or host
    if kind == "tcp":
        return ProbeConfig(kind="tcp", host=probe_host, port=port or user_port, **common)
    if action.get("scheme", "HTTP").upper() != "HTTP":
        raise ConfigError(variable, raw, "only scheme HTTP is supported")
    path = action.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(variable, raw, "httpGet.path must start with /")
    headers = tuple(
        (str(item.get("name", "")), str(item.get("value", "")))
        for item in action.get("httpHeaders", ()) if isinstance(item, dict)
    )
    return ProbeConfig(kind="http", host=probe_host, port=port or user_port, path=path, headers=headers, **common)
