"""`kapa explain NAMESPACE/SERVICE`: why the scaler asked for the pod count it did, in words or JSON.

It reads the scaler's GET /v1/explain endpoint, so it explains the running scaler's real decisions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from kapa import contract
from kapa.services import ServiceKey

DEFAULT_SCALER_URL = f"http://127.0.0.1:{contract.SCALER_HTTP_PORT}"


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
    parser.add_argument("--scaler", default=DEFAULT_SCALER_URL, help=f"scaler HTTP URL (default {DEFAULT_SCALER_URL})")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    parser.add_argument("-n", "--decisions", type=int, default=3, help="how many recent decisions to show in words")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        key = ServiceKey.parse(args.service)
    except ValueError as error:
        parser.error(str(error))
    try:
        explanation = fetch(args.scaler, key)
    except urllib.error.HTTPError as error:
        try:
            message = json.load(error).get("error", error.reason)
        except ValueError:
            message = error.reason
        print(f"kapa explain: {message}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"kapa explain: cannot reach the scaler at {args.scaler}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(explanation, indent=2) if args.json else describe(explanation, args.decisions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
