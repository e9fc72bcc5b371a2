"""A test exporter that serves the scaling counters with exactly known rates, for Prometheus to scrape.

Run as `python -m tests.scaler.exporter PORT`. PUT /series with a JSON list of series
({namespace, service, pod, component, concurrency, proxied_concurrency, rps, proxied_rps}) sets what it
exports: each counter given grows at its rate from then on, so rate() over any window must equal the rate
(a counter left out is not exported at all, as when no request went through the activator). This
lets the query layer be checked against a real Prometheus with answers known in advance; the end-to-end
test uses real queue-proxies instead.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from aiohttp import web

from kapa.core import contract

_RATES = {
    contract.CONCURRENCY_SECONDS: "concurrency",
    contract.PROXIED_CONCURRENCY_SECONDS: "proxied_concurrency",
    contract.REQUESTS: "rps",
    contract.PROXIED_REQUESTS: "proxied_rps",
}


@dataclass
class Series:
    labels: dict[str, str]
    rates: dict[str, float]
    values: dict[str, float]
    since: float

    def advance(self, now: float) -> None:
        for name, rate in self.rates.items():
            self.values[name] += rate * (now - self.since)
        self.since = now


class Exporter:
    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str, str], Series] = {}

    async def put_series(self, request: web.Request) -> web.Response:
        now = time.time()
        wanted: dict[tuple[str, str, str, str], Series] = {}
        for item in await request.json():
            labels = {
                contract.LABEL_NAMESPACE: item["namespace"],
                contract.LABEL_SERVICE: item["service"],
                contract.LABEL_COMPONENT: item.get("component", contract.COMPONENT_QUEUE_PROXY),
                "pod": item.get("pod", "pod-1"),
            }
            key = tuple(labels.values())
            old = self.series.get(key)  # type: ignore[arg-type]
            if old is not None:
                old.advance(now)
            rates = {name: float(item[field]) for name, field in _RATES.items() if field in item}
            values = {name: old.values.get(name, 0.0) if old else 0.0 for name in rates}
            wanted[key] = Series(labels, rates, values, now)  # type: ignore[index]
        self.series = wanted
        return web.Response(status=204)

    async def scaling_metrics(self, request: web.Request) -> web.Response:
        now = time.time()
        lines: list[str] = []
        for name in _RATES:
            lines.append(f"# TYPE {name.removesuffix('_total')} counter")
            for series in self.series.values():
                if name not in series.rates:
                    continue
                series_value = series.values[name] + series.rates[name] * (now - series.since)
                labels = ",".join(f'{key}="{value}"' for key, value in series.labels.items())
                lines.append(f"{name}{{{labels}}} {series_value:.6f}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def all_metrics(self, request: web.Request) -> web.Response:
        return await self.scaling_metrics(request)


def main() -> None:
    exporter = Exporter()
    app = web.Application()
    app.add_routes(
        [
            web.put("/series", exporter.put_series),
            web.get(contract.SCALING_METRICS_PATH, exporter.scaling_metrics),
            web.get(contract.METRICS_PATH, exporter.all_metrics),
        ]
    )
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
