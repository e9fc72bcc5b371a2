"""`kapa explain NAMESPACE/SERVICE`: why the scaler asked for the pod count it did, in words or JSON.

It reads the scaler's GET /v1/explain endpoint, so it explains the running scaler's real decisions. Without
--scaler it asks the running `kapa up`, which picks a free port for its scaler and leaves the URL where this
looks (`announce_local_scaler`); with no `kapa up` running, the scaler's own port on this machine (a
Kubernetes scaler port-forwarded here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kapa.core import contract
from kapa.core.services import ServiceKey

DEFAULT_SCALER_URL = f"http://127.0.0.1:{contract.SCALER_HTTP_PORT}"
LOCAL_SCALER_SUFFIX = ".url"


def local_scalers_dir() -> Path:
    """Where each running `kapa up` leaves its scaler's URL, one file named by its pid: per user, and in
    memory where the system offers it ($XDG_RUNTIME_DIR), else ~/.cache."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    return (Path(runtime_dir) if runtime_dir else Path.home() / ".cache") / "kapa" / "up"


def announce_local_scaler(url: str) -> Path:
    """Leave this process's scaler URL for `kapa explain`; the caller removes the file when it stops (one
    left by a process killed first is ignored and removed by `local_scaler_urls`)."""
    directory = local_scalers_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{os.getpid()}{LOCAL_SCALER_SUFFIX}"
    partial = path.with_suffix(".partial")  # renamed into place, so no reader sees half a URL
    partial.write_text(url + "\n")
    partial.replace(path)
    return path


def local_scaler_urls() -> list[str]:
    """The scaler URLs of the `kapa up`s running now."""
    urls = []
    for path in sorted(local_scalers_dir().glob(f"*{LOCAL_SCALER_SUFFIX}")):
        with contextlib.suppress(ValueError, OSError):
            if _running(int(path.stem)):
                urls.append(path.read_text().strip())
            else:
                path.unlink()
    return urls


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's: not the kapa up that wrote it
        return False
    return True


def _number(value: object, unit: str) -> str:
    if value is None:
        return "no data"
    return f"{float(value):.4g} {unit}"  # type: ignore[arg-type]


def describe_decision(record: Mapping[str, Any], metric: str) -> list[str]:
    """One decision in words: what was observed, against what target, what was decided and why."""
    unit = "concurrent requests" if metric == contract.METRIC_CONCURRENCY else "requests/s"
    when = time.strftime("%H:%M:%S", time.localtime(float(record["at"])))
    flags = [record["mode"] + " mode"]
    if record["panic_mode"]:
        flags.append("PANIC")
    if record["stale"]:
        flags.append("STALE: no fresh metrics, decision held")
    if record.get("poked"):
        flags.append("poked by the activator")
    lines = [
        f"{when}  {record['desired_pods']} pods  ({', '.join(flags)})",
        f"    observed {_number(record['stable_value'], unit)} over the stable window, "
        f"{_number(record['panic_value'], unit)} over the panic window",
        f"    target {float(record['target']):.4g} per pod; {record['ready_pods']} ready; "
        f"excess burst capacity {record['excess_burst_capacity']}",
    ]
    lines += [f"    - {reason}" for reason in record.get("explanation", [])]
    return lines


def describe(explanation: Mapping[str, Any], limit: int = 3) -> str:
    """The explain endpoint's answer in words: bounds first, then the newest decisions."""
    config = explanation["config"]
    metric = str(config.get("metric", contract.METRIC_CONCURRENCY))
    max_scale = config.get("max_scale") or "none"
    lines = [
        f"{explanation['service']}: metric {metric}, target {float(config['target']):.4g} per pod",
        f"  windows: stable {config['stable_window_s']:g}s, panic {config['panic_window_s']:g}s; "
        f"bounds: min-scale {config['min_scale']}, max-scale {max_scale}, "
        f"max-scale-up-rate {config['max_scale_up_rate']:g}, max-scale-down-rate {config['max_scale_down_rate']:g}, "
        f"scale-down-delay {config['scale_down_delay_s']:g}s",
    ]
    if explanation.get("metrics_stale"):
        lines.append("  Prometheus did not answer at the last tick: decisions are held until it does.")
    decisions = explanation.get("decisions", [])
    if not decisions:
        lines.append("  no decision yet (the first tick is pending)")
    for record in decisions[:limit]:
        lines += ["  " + line for line in describe_decision(record, metric)]
    return "\n".join(lines)


def fetch(scaler_url: str, key: ServiceKey, timeout_s: float = 5.0) -> dict[str, Any]:
    url = scaler_url.rstrip("/") + contract.SCALER_EXPLAIN_PATH.format(namespace=key.namespace, name=key.name)
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.load(response)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kapa explain", description="Show the scaler's last decisions for a service.")
    parser.add_argument("service", help="NAMESPACE/SERVICE (a bare NAME means namespace default)")
    parser.add_argument("--scaler", help="scaler HTTP URL (default: the running `kapa up`'s scaler, else "
                                         f"{DEFAULT_SCALER_URL})")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    parser.add_argument("-n", "--decisions", type=int, default=3, help="how many recent decisions to show in words")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        key = ServiceKey.parse(args.service)
    except ValueError as error:
        parser.error(str(error))
    scaler_url = args.scaler
    if scaler_url is None:
        running = local_scaler_urls()
        if len(running) > 1:
            print(f"kapa explain: {len(running)} `kapa up` are running; choose a scaler with --scaler URL: "
                  + ", ".join(running), file=sys.stderr)
            return 2
        scaler_url = running[0] if running else DEFAULT_SCALER_URL
    try:
        explanation = fetch(scaler_url, key)
    except urllib.error.HTTPError as error:
        try:
            message = json.load(error).get("error", error.reason)
        except ValueError:
            message = error.reason
        print(f"kapa explain: {message}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"kapa explain: no scaler answers at {scaler_url} ({error}). Start `kapa up`, or give the "
              "scaler's URL with --scaler URL (`kapa up` prints its own).", file=sys.stderr)
        return 1
    print(json.dumps(explanation, indent=2) if args.json else describe(explanation, args.decisions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
