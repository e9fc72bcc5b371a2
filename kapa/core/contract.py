"""The names Kapa's parts agree on, defined once.

The queue-proxy writes these metrics, Prometheus scrapes them, the scaler queries them, the chart's scrape
config and the Grafana dashboard name them, and the activator marks requests with these headers. Changing a
value here changes it everywhere; nothing else spells these strings out.

Configuration keys and annotations are Knative's own (config-autoscaler and `autoscaling.knative.dev/*`), so
a team can move a service over without rewriting its manifests. Defaults are the strings Knative documents;
`kapa.core.settings` parses and validates them into typed values.
"""

from __future__ import annotations

from typing import Final

# --- Prometheus metrics exported by the queue-proxy (and, for concurrency, the activator) -----------------

#: Time integral of in-flight requests, in request-seconds. rate() over a window W is the exact average
#: concurrency over W, whatever the scrape timing.
CONCURRENCY_SECONDS: Final = "kapa_concurrency_seconds_total"
#: The same integral for requests that arrived through the activator (marked by PROXY_HEADER), so the
#: scaler can subtract them and count each request once.
PROXIED_CONCURRENCY_SECONDS: Final = "kapa_proxied_concurrency_seconds_total"
#: Requests completed, labelled by LABEL_CODE_CLASS ("2xx" .. "5xx").
REQUESTS: Final = "kapa_requests_total"
#: Requests completed that arrived through the activator (for the rps metric, counted once).
PROXIED_REQUESTS: Final = "kapa_proxied_requests_total"
#: Histogram of request duration at the proxy, in seconds.
REQUEST_DURATION: Final = "kapa_request_duration_seconds"
#: Gauge: requests currently inside the proxy (queued or at the app).
REQUESTS_IN_FLIGHT: Final = "kapa_requests_in_flight"
#: Gauge: requests waiting for a concurrency slot.
QUEUE_DEPTH: Final = "kapa_queue_depth"
#: Requests that waited for a concurrency slot at the queue-proxy: zero while whatever sends to the pod (the
#: activators, together) keeps within its containerConcurrency.
QUEUED_REQUESTS: Final = "kapa_queued_requests_total"
#: Requests refused before reaching the app, labelled by LABEL_REASON.
REJECTED_REQUESTS: Final = "kapa_rejected_requests_total"

#: Upper bounds of REQUEST_DURATION's buckets, in seconds.
DURATION_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: The counters the scaler reads. They are served alone on SCALING_METRICS_PATH so Prometheus can scrape
#: them every second cheaply, while METRICS_PATH (everything) is scraped at the usual 15 s.
SCALING_METRICS: Final = (CONCURRENCY_SECONDS, PROXIED_CONCURRENCY_SECONDS, REQUESTS, PROXIED_REQUESTS)

#: Label names. Prefixed so they never collide with `namespace`, `pod`, `service`, `job` or `instance`,
#: which Prometheus's Kubernetes discovery and relabelling commonly add.
LABEL_NAMESPACE: Final = "kapa_namespace"
LABEL_SERVICE: Final = "kapa_service"
LABEL_CODE_CLASS: Final = "code_class"
LABEL_REASON: Final = "reason"
#: Which part exported a series ("queue-proxy" or "activator").
LABEL_COMPONENT: Final = "kapa_component"
COMPONENT_QUEUE_PROXY: Final = "queue-proxy"
COMPONENT_ACTIVATOR: Final = "activator"

#: Values of LABEL_REASON.
REASON_QUEUE_FULL: Final = "queue_full"
REASON_TIMEOUT: Final = "timeout"
REASON_BAD_REQUEST: Final = "bad_request"
REASON_UPSTREAM_ERROR: Final = "upstream_error"
#: Values of LABEL_CODE_CLASS, in order (index = status // 100 - 1).
CODE_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")

METRICS_PATH: Final = "/metrics"
SCALING_METRICS_PATH: Final = "/metrics/scaling"
#: Prometheus job names in the scrape configs Kapa generates (local mode and chart).
SCRAPE_JOB_SCALING: Final = "kapa-scaling"
SCRAPE_JOB_METRICS: Final = "kapa-metrics"
#: The scaler's own metrics (kapa_scaler_*, which the dashboard reads), on its HTTP port at METRICS_PATH.
SCRAPE_JOB_SCALER: Final = "kapa-scaler"
#: The panic window (6 s by default) needs several samples: scrape the scaling counters every second.
SCALING_SCRAPE_INTERVAL_S: Final = 1
METRICS_SCRAPE_INTERVAL_S: Final = 15

# --- Prometheus metrics exported by the scaler about its own decisions (the dashboard reads these) -------

#: Per service (LABEL_NAMESPACE, LABEL_SERVICE): the pod count the last decision asked for.
SCALER_DESIRED_PODS: Final = "kapa_scaler_desired_pods"
#: Per service: the ready pods the last decision saw.
SCALER_READY_PODS: Final = "kapa_scaler_ready_pods"
#: Per service: observed total concurrency (or rps) over the stable and the panic window; absent when unknown.
SCALER_OBSERVED_STABLE: Final = "kapa_scaler_observed_stable"
SCALER_OBSERVED_PANIC: Final = "kapa_scaler_observed_panic"
#: Per service: the per-pod target the observed values are divided by.
SCALER_TARGET: Final = "kapa_scaler_target"
#: Per service: 1 while in panic mode.
SCALER_PANIC_MODE: Final = "kapa_scaler_panic_mode"
#: Per service: 1 while the activator stays in the request path (proxy mode), 0 in serve mode.
SCALER_PROXY_MODE: Final = "kapa_scaler_proxy_mode"
#: Per service: Knative's excess burst capacity.
SCALER_EXCESS_BURST_CAPACITY: Final = "kapa_scaler_excess_burst_capacity"
#: Per service: 1 when the last decision was held for lack of fresh metrics.
SCALER_STALE: Final = "kapa_scaler_stale"
#: 1 when the last tick could not read Prometheus at all.
SCALER_METRICS_SOURCE_STALE: Final = "kapa_scaler_metrics_source_stale"
#: Histogram: time to observe and decide for all services in one tick, in seconds.
SCALER_TICK_DURATION: Final = "kapa_scaler_tick_duration_seconds"
#: Per service: demand signals received from the activator.
SCALER_POKES: Final = "kapa_scaler_pokes_total"

# --- Prometheus metrics exported by the activator (besides CONCURRENCY_SECONDS, REQUESTS, REJECTED_REQUESTS) --

#: Gauge per service: requests the activator holds, waiting for a pod (or a pod slot).
ACTIVATOR_HELD_REQUESTS: Final = "kapa_activator_held_requests"
#: Gauge per service: pods the activator has probed ready and sends requests to.
ACTIVATOR_READY_PODS: Final = "kapa_activator_ready_pods"
#: Histogram per service: how long requests that arrived while no pod was ready waited for one, in seconds.
ACTIVATOR_COLD_START_WAIT: Final = "kapa_activator_cold_start_wait_seconds"
#: Counter per service: pokes a scaler accepted (one per scaler replica per activation).
ACTIVATOR_POKES: Final = "kapa_activator_pokes_total"

# --- HTTP APIs between the parts ----------------------------------------------------------------------

#: On the scaler's HTTP port: the activator's "a request arrived for this service at zero" (POST).
SCALER_POKE_PATH: Final = "/v1/poke/{namespace}/{name}"
#: On the scaler's HTTP port: a service's configuration and last decisions with reasons (GET; `kapa explain`).
SCALER_EXPLAIN_PATH: Final = "/v1/explain/{namespace}/{name}"
#: On the activator's admin port: the local mode's endpoint feed (PUT, JSON list of "host:port").
ACTIVATOR_ENDPOINTS_PATH: Final = "/v1/endpoints/{namespace}/{name}"

# --- HTTP headers --------------------------------------------------------------------------------------

#: Set by the activator on every request it forwards; the queue-proxy counts such requests as proxied.
PROXY_HEADER: Final = "K-Proxy-Request"
PROXY_HEADER_VALUE: Final = "activator"
#: The h2c counterpart of PROXY_HEADER, per connection: an HTTP/2 SETTINGS identifier from the range kept
#: for experiments (RFC 9113 11.3) that the activator puts first in the client's first SETTINGS frame of a
#: connection it forwards, with value 1; the queue-proxy counts that connection's streams as proxied.
#: Peers ignore settings they do not know (RFC 9113 6.5.2).
H2C_PROXY_SETTING: Final = 0xF0AC
#: A request with this header on the serving port is answered by the queue-proxy itself with its
#: readiness (200 when ready, 503 otherwise), so the activator can probe a pod through its serving port.
PROBE_HEADER: Final = "K-Network-Probe"
PROBE_HEADER_VALUE: Final = "queue"

# --- Ports and paths -------------------------------------------------------------------------------------

QUEUE_SERVING_PORT: Final = 8012
USER_PORT: Final = 8080
QUEUE_METRICS_PORT: Final = 9091
QUEUE_ADMIN_PORT: Final = 8022
READY_PATH: Final = "/ready"
LIVE_PATH: Final = "/live"
#: Admin path a preStop hook on the app's container calls: it starts the queue-proxy's drain and answers
#: once no request has arrived for the drain period, so Kubernetes stops the app only after that.
WAIT_FOR_DRAIN_PATH: Final = "/wait-for-drain"
SCALER_GRPC_PORT: Final = 9095
SCALER_HTTP_PORT: Final = 9096
ACTIVATOR_PORT: Final = 8013
ACTIVATOR_ADMIN_PORT: Final = 9093
XDS_PORT: Final = 18000
ENVOY_LISTENER_PORT: Final = 8081
#: Envoy's own admin interface (config_dump, stats, /ready), on loopback.
ENVOY_ADMIN_PORT: Final = 9901
#: The gateway's HTTP admin API (set a service's mode and endpoints, read the routing state).
GATEWAY_ADMIN_PORT: Final = 9094

# --- Routing modes (the scaler decides, the gateway routes) ---------------------------------------------

#: Requests go straight to the service's pods.
MODE_SERVE: Final = "serve"
#: Requests go through the activator (service at zero, or its excess burst capacity is negative).
MODE_PROXY: Final = "proxy"

# --- Queue-proxy environment (Knative's names where Knative has one) ------------------------------------

ENV_QUEUE_SERVING_PORT: Final = "QUEUE_SERVING_PORT"
ENV_USER_PORT: Final = "USER_PORT"
ENV_CONTAINER_CONCURRENCY: Final = "CONTAINER_CONCURRENCY"
ENV_REVISION_TIMEOUT_SECONDS: Final = "REVISION_TIMEOUT_SECONDS"
ENV_SERVING_NAMESPACE: Final = "SERVING_NAMESPACE"
ENV_SERVING_SERVICE: Final = "SERVING_SERVICE"
#: A Kubernetes probe as JSON ({"httpGet": {"path": ..., "port": ...}} or {"tcpSocket": {...}}), as Knative
#: passes the user's readiness probe to its queue-proxy.
ENV_SERVING_READINESS_PROBE: Final = "SERVING_READINESS_PROBE"
ENV_METRICS_PORT: Final = "KAPA_METRICS_PORT"
ENV_ADMIN_PORT: Final = "KAPA_ADMIN_PORT"
ENV_DRAIN_SECONDS: Final = "KAPA_DRAIN_SECONDS"
#: Address the queue-proxy's serving, admin and metrics listeners bind to.
ENV_BIND_ADDRESS: Final = "KAPA_BIND_ADDRESS"
#: Host the queue-proxy forwards to (the app shares the pod's network namespace, so loopback).
ENV_UPSTREAM_HOST: Final = "KAPA_UPSTREAM_HOST"
#: Client connections of the queue-proxy (and the activator, as --header-read-timeout): a request head
#: must be complete this long after the connection opened or the head's first byte, else 408 (slowloris).
ENV_HEADER_READ_TIMEOUT_SECONDS: Final = "KAPA_HEADER_READ_TIMEOUT_SECONDS"
#: A keep-alive client connection with no request under way is closed after this long (activator:
#: --idle-timeout).
ENV_IDLE_TIMEOUT_SECONDS: Final = "KAPA_IDLE_TIMEOUT_SECONDS"

DEFAULT_CONTAINER_CONCURRENCY: Final = 0
DEFAULT_REVISION_TIMEOUT_SECONDS: Final = 300
#: Knative's drain: keep serving until no request has arrived for this long after SIGTERM.
DEFAULT_DRAIN_SECONDS: Final = 30
DEFAULT_BIND_ADDRESS: Final = "0.0.0.0"
DEFAULT_UPSTREAM_HOST: Final = "127.0.0.1"
#: Between Envoy's edge recommendation (request_headers_timeout 10 s) and Go's/nginx's one minute.
DEFAULT_HEADER_READ_TIMEOUT_SECONDS: Final = 30
#: nginx's and aiohttp's keep-alive timeout; longer than the gateway's upstream idle timeout (30 s), so the
#: client side closes an idle connection first and never reuses one the server is closing.
DEFAULT_IDLE_TIMEOUT_SECONDS: Final = 75
#: Requests allowed to wait per concurrency slot when CONTAINER_CONCURRENCY > 0 (Knative's breaker).
QUEUE_DEPTH_PER_SLOT: Final = 10

# --- Autoscaler configuration: config-autoscaler keys and their defaults --------------------------------

#: Knative's config-autoscaler ConfigMap keys with their documented defaults.
AUTOSCALER_DEFAULTS: Final[dict[str, str]] = {
    "container-concurrency-target-percentage": "70",
    "container-concurrency-target-default": "100",
    "requests-per-second-target-default": "200",
    "target-burst-capacity": "211",
    "stable-window": "60s",
    "panic-window-percentage": "10.0",
    "panic-threshold-percentage": "200.0",
    "max-scale-up-rate": "1000.0",
    "max-scale-down-rate": "2.0",
    "enable-scale-to-zero": "true",
    "scale-to-zero-grace-period": "30s",
    "scale-to-zero-pod-retention-period": "0s",
    "scale-down-delay": "0s",
    "activator-capacity": "100.0",
    "initial-scale": "1",
    "allow-zero-initial-scale": "false",
    "min-scale": "0",
    "max-scale": "0",
    "max-scale-limit": "0",
    "activation-scale": "1",
    "metric": "concurrency",
}
#: The name Kapa's issue tracker and Knative's annotation use for the utilisation key; accepted as an
#: alias of `container-concurrency-target-percentage` in the global config.
AUTOSCALER_KEY_ALIASES: Final[dict[str, str]] = {
    "target-utilization-percentage": "container-concurrency-target-percentage",
}

METRIC_CONCURRENCY: Final = "concurrency"
METRIC_RPS: Final = "rps"
#: The metrics of the HPA class: the Kubernetes HPA scales on the pods' resource use, Kapa only routes.
METRIC_CPU: Final = "cpu"
METRIC_MEMORY: Final = "memory"
#: Values of autoscaling.knative.dev/class: Knative's pod autoscaler (the KPA, Kapa's scaler; the default) or
#: the Kubernetes HPA on cpu or memory.
CLASS_KPA: Final = "kpa.autoscaling.knative.dev"
CLASS_HPA: Final = "hpa.autoscaling.knative.dev"
#: The HPA class's default cpu target, in percent of the pods' cpu requests (`kubectl autoscale`'s).
DEFAULT_HPA_CPU_TARGET_PERCENTAGE: Final = 80

# --- Per-service annotations ------------------------------------------------------------------------------

KNATIVE_ANNOTATION_PREFIX: Final = "autoscaling.knative.dev/"
#: The `autoscaling.knative.dev/<key>` annotations Kapa honours.
KNATIVE_ANNOTATION_KEYS: Final = (
    "class",
    "metric",
    "target",
    "target-utilization-percentage",
    "window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "target-burst-capacity",
    "scale-down-delay",
    "scale-to-zero-pod-retention-period",
    "min-scale",
    "max-scale",
    "initial-scale",
    "activation-scale",
    "metric-aggregation-algorithm",
)
KAPA_ANNOTATION_PREFIX: Final = "kapa.dev/"
#: Marks a Deployment (and its Service) for Kapa to manage.
ANNOTATION_ENABLED: Final = KAPA_ANNOTATION_PREFIX + "enabled"
#: Knative's containerConcurrency (a spec field there), as an annotation on a plain Deployment.
ANNOTATION_CONTAINER_CONCURRENCY: Final = KAPA_ANNOTATION_PREFIX + "container-concurrency"
#: Knative's timeoutSeconds, as an annotation.
ANNOTATION_TIMEOUT_SECONDS: Final = KAPA_ANNOTATION_PREFIX + "timeout-seconds"
#: Host names a service answers besides NAME.NAMESPACE[.svc[.<cluster domain>]], comma-separated (a
#: Knative Route's custom domains, on a plain Deployment).
ANNOTATION_HOSTS: Final = KAPA_ANNOTATION_PREFIX + "hosts"
#: Which rules decide a service's pods: Knative's KPA (SCALING_POLICY_KNATIVE, the default) or, opt-in,
#: Knative's decision adjusted by the predictive keep-alive policy (SCALING_POLICY_PREDICTIVE, scaler/policy.py).
ANNOTATION_SCALING_POLICY: Final = KAPA_ANNOTATION_PREFIX + "scaling-policy"
SCALING_POLICY_KNATIVE: Final = "knative"
SCALING_POLICY_PREDICTIVE: Final = "predictive"
SCALING_POLICIES: Final = (SCALING_POLICY_KNATIVE, SCALING_POLICY_PREDICTIVE)
DEFAULT_SCALING_POLICY: Final = SCALING_POLICY_KNATIVE
#: With the predictive policy: how long before an expected burst the pre-warmed pods are asked for (their
#: start-up time plus a margin).
ANNOTATION_PREWARM_LEAD: Final = KAPA_ANNOTATION_PREFIX + "prewarm-lead"
DEFAULT_PREWARM_LEAD_SECONDS: Final = 10
#: The reason of the Warning Event that names a rejected annotation value and the default used instead, on
#: the Deployment (the scaler and the webhook report them; `kubectl get events --field-selector reason=...`).
EVENT_REASON_INVALID_ANNOTATION: Final = "InvalidAutoscalingAnnotation"


def knative_annotation(key: str) -> str:
    """The full annotation name for one of KNATIVE_ANNOTATION_KEYS."""
    if key not in KNATIVE_ANNOTATION_KEYS:
        raise KeyError(f"not a Knative autoscaling annotation Kapa honours: {key!r}")
    return KNATIVE_ANNOTATION_PREFIX + key
