"""The `kapa` command: one entry point whose subcommands live in the package that owns them.

Each subcommand is imported only when it runs, so `kapa load` does not pay for grpc or Envoy imports and a
broken optional part cannot stop the others from starting.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

#: subcommand -> ("module:function", one-line help). Each function takes argv (without the subcommand)
#: and returns the process exit code.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("kapa.local.up:main", "run the whole autoscaling loop locally (Prometheus, scaler, activator, replicas)"),
    "load": ("kapa.tools.load:main", "drive HTTP load like hey and print a latency summary"),
    "queue-proxy": ("queue_proxy.__main__:main", "run the queue-proxy sidecar in front of an app"),
    "scaler": ("scaler.__main__:main", "run the scaler (KPA decision, KEDA external scaler gRPC)"),
    "activator": ("activator.__main__:main", "run the activator (holds requests for services at zero)"),
    "gateway": ("gateway.__main__:main", "run the xDS control plane that programs the Envoy gateway"),
    "explain": ("scaler.explain:main", "show the scaler's last decisions for NAMESPACE/SERVICE"),
    "simulate": ("scaler.simulate:main", "replay a trace through the decision on a virtual clock"),
    "sample-app": ("kapa.tools.sample_app:main", "run the sample app (sleep, prime, bloat)"),
    "inject": ("kapa.kube.inject:main", "add the queue-proxy sidecar to enrolled Deployments in a YAML manifest"),
    "detach": ("kapa.kube.detach:main", "hand enrolled workloads back to plain Kubernetes (helm uninstall runs it)"),
}


def _load(target: str) -> Callable[[list[str]], int]:
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: kapa COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "Run `kapa COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"kapa: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return _load(SUBCOMMANDS[command][0])(rest)


if __name__ == "__main__":
    sys.exit(main())
