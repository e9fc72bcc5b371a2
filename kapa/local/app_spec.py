"""How the local mode runs one replica of a service's app: the `local:` section of the services file, typed.

    local:
      command: ["{python}", "-m", "kapa", "sample-app", "--port", "{port}"]
      portEnv: PORT            # optional: also pass the port in this environment variable
      readinessPath: /ready    # optional: HTTP readiness probe path; without it, a TCP connect probe
      env: {GREETING: hi}      # optional: extra environment for the app

Every replica gets its own port, so the port is never written in the file: `{port}` in the command (a flag)
or `portEnv` (an environment variable) tells the app which one. `{python}` is the interpreter running Kapa,
so the shipped examples work from any virtualenv.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from kapa.core.services import ServiceEntry

_KEYS = frozenset({"command", "portEnv", "readinessPath", "env"})


class AppSpecError(ValueError):
    """A `local:` section that cannot run; the message names the service and the key."""


@dataclass(frozen=True)
class AppSpec:
    """What starting one replica of a service's app takes."""

    command: tuple[str, ...]
    port_env: str | None = None
    readiness_path: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def argv(self, port: int) -> list[str]:
        """The command line of a replica whose app listens on `port`."""
        return [part.replace("{port}", str(port)).replace("{python}", sys.executable) for part in self.command]

    def environment(self, port: int) -> dict[str, str]:
        """Extra environment of a replica whose app listens on `port`."""
        extra = dict(self.env)
        if self.port_env:
            extra[self.port_env] = str(port)
        return extra

    def readiness_probe(self, port: int) -> str:
        """The Kubernetes-style probe (JSON) the queue-proxy runs against the app, as Knative hands it over."""
        if self.readiness_path:
            probe: dict[str, object] = {"httpGet": {"path": self.readiness_path, "port": port}}
        else:
            probe = {"tcpSocket": {"port": port}}
        return json.dumps(probe)


def app_spec(entry: ServiceEntry) -> AppSpec:
    """Validate a service's `local:` section; errors name the service and the key."""
    where = f"service {entry.spec.key}: local"
    section = entry.local
    unknown = sorted(set(section) - _KEYS)
    if unknown:
        hint = " (each replica gets its own port: use {port} in command or portEnv)" if "port" in unknown else ""
        raise AppSpecError(f"{where}: unknown key(s) {', '.join(unknown)}{hint}; known: {', '.join(sorted(_KEYS))}")
    command = section.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(part, (str, int)) for part in command):
        raise AppSpecError(f"{where}.command: expected a non-empty list of strings")
    port_env = section.get("portEnv")
    if port_env is not None and (not isinstance(port_env, str) or not port_env):
        raise AppSpecError(f"{where}.portEnv: expected an environment variable name")
    parts = tuple(str(part) for part in command)
    if port_env is None and not any("{port}" in part for part in parts):
        raise AppSpecError(f"{where}: the app must learn its port: put {{port}} in command or set portEnv")
    readiness_path = section.get("readinessPath")
    if readiness_path is not None and (not isinstance(readiness_path, str) or not readiness_path.startswith("/")):
        raise AppSpecError(f"{where}.readinessPath: expected a path starting with '/'")
    env = section.get("env") or {}
    if not isinstance(env, dict):
        raise AppSpecError(f"{where}.env: expected a mapping of names to values")
    return AppSpec(parts, port_env, readiness_path, {str(k): str(v) for k, v in env.items()})
