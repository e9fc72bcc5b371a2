"""Autoscaler configuration: Knative's config-autoscaler keys and `autoscaling.knative.dev/*` annotations.

Values arrive as strings (a ConfigMap's data, a Deployment's annotations). They are parsed and validated
once, here, into frozen typed objects that the decision reads without further checks. A bad value never
stops the scaler: it becomes a `ConfigError` naming the key and the service, and the default is used,
which is what Knative does for a malformed annotation it cannot reject at admission.

The ranges are Knative's documented ones: stable window 6 s..1 h, panic threshold 110..1000 %, panic
window and utilisation 1..100 %, rates above 1, target-burst-capacity non-negative or -1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from kapa.core.contract import (
    ANNOTATION_CONTAINER_CONCURRENCY,
    ANNOTATION_PREWARM_LEAD,
    ANNOTATION_SCALING_POLICY,
    ANNOTATION_TIMEOUT_SECONDS,
    AUTOSCALER_DEFAULTS,
    AUTOSCALER_KEY_ALIASES,
    CLASS_HPA,
    CLASS_KPA,
    DEFAULT_CONTAINER_CONCURRENCY,
    DEFAULT_HPA_CPU_TARGET_PERCENTAGE,
    DEFAULT_PREWARM_LEAD_SECONDS,
    DEFAULT_REVISION_TIMEOUT_SECONDS,
    DEFAULT_SCALING_POLICY,
    KNATIVE_ANNOTATION_KEYS,
    KNATIVE_ANNOTATION_PREFIX,
    METRIC_CONCURRENCY,
    METRIC_CPU,
    METRIC_MEMORY,
    METRIC_RPS,
    SCALING_POLICIES,
    SCALING_POLICY_KNATIVE,
)
from kapa.core.services import ServiceKey, ServiceSpec

GLOBAL = "global"
AGGREGATION_LINEAR = "linear"
AGGREGATION_WEIGHTED_EXPONENTIAL = "weighted-exponential"
#: Knative's smallest target: a target of 0 would ask for infinitely many pods.
MIN_TARGET = 0.01
STABLE_WINDOW_MIN_S = 6.0
STABLE_WINDOW_MAX_S = 3600.0
#: Knative's shortest scale-to-zero grace period: the time the activator needs to get into the request path
#: before the last pod goes (the predictive policy's hand-over takes no less).
SCALE_TO_ZERO_GRACE_MIN_S = 6.0
#: The longest pre-warm lead (kapa.dev/prewarm-lead): a pod that takes longer to start is not pre-warmed
#: usefully by a policy that learns from the last hour.
MAX_PREWARM_LEAD_S = 600.0
#: Knative's largest containerConcurrency and request timeout.
MAX_CONTAINER_CONCURRENCY = 1000
MAX_TIMEOUT_S = 600.0

@dataclass(frozen=True)
class ConfigError:
    """A rejected configuration value; the default was used in its place."""

    key: str
    service: str
    message: str

    def __str__(self) -> str:
        return f"{self.key} ({self.service}): {self.message}"


# --- value parsers: each returns the typed value or raises ValueError with a message for the user ---------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str) -> float:
    """Seconds from a Go duration ("60s", "1m30s", "500ms", "-5s") or a bare number of seconds ("90")."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"not a duration: {text!r}")
        return seconds
    sign = -1.0 if value.startswith("-") else 1.0
    body = value[1:] if value[:1] in ("+", "-") else value
    position, total = 0, 0.0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            raise ValueError(f"not a duration: {text!r} (use e.g. 60s, 1m30s, 500ms)")
        total += float(match.group(1)) * _DURATION_UNIT_S[match.group(2)]
        position = match.end()
    if not body:
        raise ValueError(f"not a duration: {text!r} (use e.g. 60s, 1m30s, 500ms)")
    return sign * total


def _number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _format(value: float) -> str:
    return f"{value:g}"


def _float_at_least(low: float, *, exclusive: bool = False, high: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _number(text)
        too_low = value <= low if exclusive else value < low
        if too_low or (high is not None and value > high):
            bound = f"above {_format(low)}" if exclusive else f"at least {_format(low)}"
            if high is not None:
                # "in 0..600" would name the excluded low end as allowed.
                bound = f"{bound} and at most {_format(high)}" if exclusive else f"in {_format(low)}..{_format(high)}"
            raise ValueError(f"{text.strip()} out of range: must be {bound}")
        return value

    return parse


def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _number(text)
        if value != int(value):
            raise ValueError(f"not a whole number: {text!r}")
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"in {low}..{high}"
            raise ValueError(f"{text.strip()} out of range: must be {bound}")
        return int(value)

    return parse


def _duration_in(low_s: float, high_s: float | None = None, *, whole_seconds: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = parse_duration_s(text)
        if value < low_s or (high_s is not None and value > high_s):
            bound = f"at least {_format(low_s)}s" if high_s is None else f"in {_format(low_s)}s..{_format(high_s)}s"
            raise ValueError(f"{text.strip()} out of range: must be {bound}")
        if whole_seconds and value != int(value):
            raise ValueError(f"{text.strip()} must be whole seconds (metrics are kept in 1 s buckets)")
        return value

    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"not true or false: {text!r}")
    return value == "true"


def _burst_capacity(text: str) -> float:
    value = _number(text)
    if value < 0 and value != -1:
        raise ValueError(f"{text.strip()} out of range: must be -1 (activator always in path) or at least 0")
    return value


def _metric(text: str) -> str:
    value = text.strip()
    if value not in (METRIC_CONCURRENCY, METRIC_RPS):
        raise ValueError(f"unsupported metric {text!r}: use {METRIC_CONCURRENCY} or {METRIC_RPS}")
    return value


def _service_metric(text: str) -> str:
    """A service's metric: the KPA's two, or the HPA class's resources (checked against the class later)."""
    value = text.strip()
    if value not in (METRIC_CONCURRENCY, METRIC_RPS, METRIC_CPU, METRIC_MEMORY):
        raise ValueError(
            f"unsupported metric {text!r}: use {METRIC_CONCURRENCY} or {METRIC_RPS} (or, with the "
            f"{CLASS_HPA} class, {METRIC_CPU} or {METRIC_MEMORY})"
        )
    return value


def _class(text: str) -> str:
    value = text.strip()
    if value not in (CLASS_KPA, CLASS_HPA):
        raise ValueError(f"unknown autoscaler class {text!r}: use {CLASS_KPA} or {CLASS_HPA}")
    return value


def _aggregation(text: str) -> str:
    value = text.strip()
    if value.lower() == AGGREGATION_LINEAR:
        return AGGREGATION_LINEAR
    # Knative spells it weightedExponential; accept the kebab-case form too.
    if value.lower() in ("weightedexponential", AGGREGATION_WEIGHTED_EXPONENTIAL):
        return AGGREGATION_WEIGHTED_EXPONENTIAL
    raise ValueError(f"unknown algorithm {text!r}: use linear or weightedExponential")


def _scaling_policy(text: str) -> str:
    value = text.strip()
    if value not in SCALING_POLICIES:
        raise ValueError(f"unknown scaling policy {text!r}: use {' or '.join(SCALING_POLICIES)}")
    return value


_percentage = _float_at_least(1.0, high=100.0)
_window = _duration_in(STABLE_WINDOW_MIN_S, STABLE_WINDOW_MAX_S, whole_seconds=True)
_delay = _duration_in(0.0, STABLE_WINDOW_MAX_S)
_scale = _int_at_least(0)

#: config-autoscaler key -> (AutoscalerConfig field, parser).
_GLOBAL_SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "metric": ("metric", _metric),
    "container-concurrency-target-percentage": ("target_utilization_percentage", _percentage),
    "container-concurrency-target-default": ("container_concurrency_target_default", _float_at_least(MIN_TARGET)),
    "requests-per-second-target-default": ("requests_per_second_target_default", _float_at_least(MIN_TARGET)),
    "target-burst-capacity": ("target_burst_capacity", _burst_capacity),
    "stable-window": ("stable_window_s", _window),
    "panic-window-percentage": ("panic_window_percentage", _percentage),
    "panic-threshold-percentage": ("panic_threshold_percentage", _float_at_least(110.0, high=1000.0)),
    "max-scale-up-rate": ("max_scale_up_rate", _float_at_least(1.0, exclusive=True)),
    "max-scale-down-rate": ("max_scale_down_rate", _float_at_least(1.0, exclusive=True)),
    "enable-scale-to-zero": ("enable_scale_to_zero", _bool),
    # Knative: the grace period must leave the activator time to get into the path.
    "scale-to-zero-grace-period": ("scale_to_zero_grace_period_s", _duration_in(SCALE_TO_ZERO_GRACE_MIN_S)),
    "scale-to-zero-pod-retention-period": ("scale_to_zero_pod_retention_period_s", _delay),
    "scale-down-delay": ("scale_down_delay_s", _delay),
    "activator-capacity": ("activator_capacity", _float_at_least(1.0)),
    "initial-scale": ("initial_scale", _scale),
    "allow-zero-initial-scale": ("allow_zero_initial_scale", _bool),
    "min-scale": ("min_scale", _scale),
    "max-scale": ("max_scale", _scale),
    "max-scale-limit": ("max_scale_limit", _scale),
    "activation-scale": ("activation_scale", _int_at_least(1)),
}

#: annotation key (after the prefix) -> (ServiceConfig field it feeds, parser). The global default of each
#: comes from the config-autoscaler key named in _ANNOTATION_GLOBAL_KEY, where there is one.
_ANNOTATION_SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "class": ("autoscaler_class", _class),
    "metric": ("metric", _service_metric),
    "target": ("target", _float_at_least(MIN_TARGET)),
    "target-utilization-percentage": ("target_utilization_percentage", _percentage),
    "window": ("stable_window_s", _window),
    "panic-window-percentage": ("panic_window_percentage", _percentage),
    "panic-threshold-percentage": ("panic_threshold_percentage", _float_at_least(110.0, high=1000.0)),
    "target-burst-capacity": ("target_burst_capacity", _burst_capacity),
    "scale-down-delay": ("scale_down_delay_s", _delay),
    "scale-to-zero-pod-retention-period": ("scale_to_zero_pod_retention_period_s", _delay),
    "min-scale": ("min_scale", _scale),
    "max-scale": ("max_scale", _scale),
    "initial-scale": ("initial_scale", _scale),
    "activation-scale": ("activation_scale", _int_at_least(1)),
    "metric-aggregation-algorithm": ("aggregation", _aggregation),
}
assert set(_ANNOTATION_SETTINGS) == set(KNATIVE_ANNOTATION_KEYS), "annotation table out of step with the contract"


@dataclass(frozen=True)
class AutoscalerConfig:
    """The global autoscaler configuration (Knative's config-autoscaler), typed; units in the names."""

    metric: str
    target_utilization_percentage: float
    container_concurrency_target_default: float
    requests_per_second_target_default: float
    target_burst_capacity: float
    stable_window_s: float
    panic_window_percentage: float
    panic_threshold_percentage: float
    max_scale_up_rate: float
    max_scale_down_rate: float
    enable_scale_to_zero: bool
    scale_to_zero_grace_period_s: float
    scale_to_zero_pod_retention_period_s: float
    scale_down_delay_s: float
    activator_capacity: float
    initial_scale: int
    allow_zero_initial_scale: bool
    min_scale: int
    max_scale: int
    max_scale_limit: int
    activation_scale: int

    @classmethod
    def default(cls) -> AutoscalerConfig:
        """Knative's documented defaults (kapa.core.contract.AUTOSCALER_DEFAULTS)."""
        return _DEFAULT_CONFIG

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> tuple[AutoscalerConfig, list[ConfigError]]:
        """Parse config-autoscaler keys. Each invalid or unknown value gives an error and keeps the default."""
        values = _parse_defaults()
        errors: list[ConfigError] = []
        given: set[str] = set()
        for raw_key, raw_value in data.items():
            key = AUTOSCALER_KEY_ALIASES.get(str(raw_key), str(raw_key))
            if key.startswith("_"):  # Knative ConfigMaps carry an `_example` block; it is documentation.
                continue
            if key not in _GLOBAL_SETTINGS:
                errors.append(ConfigError(str(raw_key), GLOBAL, "unknown config-autoscaler key, ignored"))
                continue
            field_name, parse = _GLOBAL_SETTINGS[key]
            try:
                values[field_name] = parse(_as_text(raw_value))
                given.add(key)
            except ValueError as error:
                default = AUTOSCALER_DEFAULTS[key]
                errors.append(ConfigError(str(raw_key), GLOBAL, f"{error}; using the default {default}"))
        errors += _check_global_consistency(values)
        return cls(**values), errors


def _as_text(value: object) -> str:
    # YAML turns unquoted `true` and `70` into bool and int; the keys are defined over their text.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse_defaults() -> dict[str, Any]:
    return {field_name: parse(AUTOSCALER_DEFAULTS[key]) for key, (field_name, parse) in _GLOBAL_SETTINGS.items()}


def _check_global_consistency(values: dict[str, Any]) -> list[ConfigError]:
    """Rules between keys (Knative's config validation); the offending key falls back to its default."""
    errors: list[ConfigError] = []
    defaults = _parse_defaults()
    if values["initial_scale"] == 0 and not values["allow_zero_initial_scale"]:
        errors.append(ConfigError("initial-scale", GLOBAL, "0 needs allow-zero-initial-scale: true; using 1"))
        values["initial_scale"] = max(1, defaults["initial_scale"])
    limit = values["max_scale_limit"]
    if limit > 0 and (values["max_scale"] == 0 or values["max_scale"] > limit):
        errors.append(ConfigError("max-scale", GLOBAL, f"must be between 1 and max-scale-limit {limit}; using {limit}"))
        values["max_scale"] = limit
    if values["max_scale"] > 0 and values["min_scale"] > values["max_scale"]:
        errors.append(
            ConfigError("min-scale", GLOBAL, f"{values['min_scale']} exceeds max-scale {values['max_scale']}; using 0")
        )
        values["min_scale"] = 0
    return errors


@dataclass(frozen=True)
class ServiceConfig:
    """The effective settings of one service after its annotations, as the decision uses them.

    `target` is already the per-pod value the KPA divides by: max(0.01, total × utilisation), where total is
    containerConcurrency, else container-concurrency-target-default (requests-per-second-target-default for
    rps), and a `target` annotation replaces total (capped at containerConcurrency when that is set).
    """

    key: ServiceKey
    #: contract.CLASS_KPA (Kapa decides) or contract.CLASS_HPA (the Kubernetes HPA on `metric`, cpu or memory,
    #: against `total_target`: percent of the cpu requests, or MiB per pod).
    autoscaler_class: str
    metric: str
    target: float
    total_target: float
    target_utilization_percentage: float
    container_concurrency: int
    stable_window_s: float
    panic_window_s: float
    panic_threshold: float
    max_scale_up_rate: float
    max_scale_down_rate: float
    target_burst_capacity: float
    activator_capacity: float
    enable_scale_to_zero: bool
    scale_to_zero_grace_period_s: float
    scale_to_zero_pod_retention_period_s: float
    scale_down_delay_s: float
    min_scale: int
    max_scale: int
    initial_scale: int
    activation_scale: int
    aggregation: str
    timeout_s: float
    #: kapa.dev/scaling-policy: contract.SCALING_POLICY_KNATIVE, or SCALING_POLICY_PREDICTIVE (scaler/policy.py
    #: adjusts Knative's decision by what the service's recent silences predict).
    scaling_policy: str
    #: kapa.dev/prewarm-lead: how long before an expected burst the predictive policy asks for pods.
    prewarm_lead_s: float


@dataclass(frozen=True)
class SidecarSettings:
    """The two Kapa annotations every part of the data path reads (Knative's containerConcurrency and
    timeoutSeconds): the queue-proxy enforces them, the activator holds and times requests by them, the
    gateway times routes by the timeout, and local mode starts its queue-proxies with them."""

    container_concurrency: int = DEFAULT_CONTAINER_CONCURRENCY
    timeout_s: float = float(DEFAULT_REVISION_TIMEOUT_SECONDS)


def sidecar_settings(spec: ServiceSpec) -> tuple[SidecarSettings, list[ConfigError]]:
    """`kapa.dev/container-concurrency` (0..1000, 0 = unlimited) and `kapa.dev/timeout-seconds` (above 0, at
    most 600), each rejected value a ConfigError naming it, with the default in its place."""
    errors: list[ConfigError] = []
    settings = SidecarSettings(
        container_concurrency=_kapa_annotation(
            spec,
            ANNOTATION_CONTAINER_CONCURRENCY,
            _int_at_least(0, MAX_CONTAINER_CONCURRENCY),
            DEFAULT_CONTAINER_CONCURRENCY,
            errors,
        ),
        timeout_s=_kapa_annotation(
            spec,
            ANNOTATION_TIMEOUT_SECONDS,
            _float_at_least(0.0, exclusive=True, high=MAX_TIMEOUT_S),
            float(DEFAULT_REVISION_TIMEOUT_SECONDS),
            errors,
        ),
    )
    return settings, errors


def service_config(global_config: AutoscalerConfig, spec: ServiceSpec) -> tuple[ServiceConfig, list[ConfigError]]:
    """Apply a service's `autoscaling.knative.dev/*` and Kapa annotations over the global configuration.

    Every rejected annotation yields a ConfigError naming the annotation and the service, and the global
    value is used in its place.
    """
    service = str(spec.key)
    errors: list[ConfigError] = []
    values: dict[str, Any] = {
        "autoscaler_class": CLASS_KPA,
        "metric": None,
        "target": None,
        "target_utilization_percentage": global_config.target_utilization_percentage,
        "stable_window_s": global_config.stable_window_s,
        "panic_window_percentage": global_config.panic_window_percentage,
        "panic_threshold_percentage": global_config.panic_threshold_percentage,
        "target_burst_capacity": global_config.target_burst_capacity,
        "scale_down_delay_s": global_config.scale_down_delay_s,
        "scale_to_zero_pod_retention_period_s": global_config.scale_to_zero_pod_retention_period_s,
        "min_scale": global_config.min_scale,
        "max_scale": global_config.max_scale,
        "initial_scale": global_config.initial_scale,
        "activation_scale": global_config.activation_scale,
        "aggregation": AGGREGATION_LINEAR,
    }
    for name, raw_value in spec.annotations.items():
        if not name.startswith(KNATIVE_ANNOTATION_PREFIX):
            continue
        short = name[len(KNATIVE_ANNOTATION_PREFIX) :]
        if short not in _ANNOTATION_SETTINGS:
            errors.append(ConfigError(name, service, "not an autoscaling annotation Kapa honours, ignored"))
            continue
        field_name, parse = _ANNOTATION_SETTINGS[short]
        try:
            values[field_name] = parse(raw_value)
        except ValueError as error:
            errors.append(
                ConfigError(name, service, f"{error}; using {_describe_default(field_name, values[field_name])}")
            )

    sidecar, sidecar_errors = sidecar_settings(spec)
    errors += sidecar_errors
    container_concurrency, timeout_s = sidecar.container_concurrency, sidecar.timeout_s
    scaling_policy = _kapa_annotation(spec, ANNOTATION_SCALING_POLICY, _scaling_policy, DEFAULT_SCALING_POLICY, errors)
    prewarm_lead_s = _kapa_annotation(
        spec, ANNOTATION_PREWARM_LEAD, _duration_in(0.0, MAX_PREWARM_LEAD_S), float(DEFAULT_PREWARM_LEAD_SECONDS), errors
    )
    errors += _check_service_consistency(global_config, values, service)
    if values["autoscaler_class"] == CLASS_HPA:
        errors += _check_hpa_class(values, service)
        if scaling_policy != SCALING_POLICY_KNATIVE:
            errors.append(ConfigError(ANNOTATION_SCALING_POLICY, service, f"{scaling_policy} needs Kapa's own "
                                      f"autoscaler class, not {CLASS_HPA}; using {SCALING_POLICY_KNATIVE}"))
            scaling_policy = SCALING_POLICY_KNATIVE
    elif values["metric"] in (METRIC_CPU, METRIC_MEMORY):
        errors.append(ConfigError(KNATIVE_ANNOTATION_PREFIX + "metric", service,
                                  f"{values['metric']} needs autoscaling.knative.dev/class: {CLASS_HPA}; using "
                                  f"{global_config.metric}"))
        values["metric"] = None
    if values["metric"] is None:
        values["metric"] = global_config.metric

    if values["metric"] == METRIC_RPS:
        total = global_config.requests_per_second_target_default
    else:
        total = (
            float(container_concurrency)
            if container_concurrency > 0
            else global_config.container_concurrency_target_default
        )
    if values["target"] is not None:
        total = values["target"]
        # Knative: a concurrency target above containerConcurrency could never be reached; cap it.
        if values["metric"] == METRIC_CONCURRENCY and 0 < container_concurrency < total:
            total = float(container_concurrency)
    utilization = values["target_utilization_percentage"]
    stable_window_s = values["stable_window_s"]
    return (
        ServiceConfig(
            key=spec.key,
            autoscaler_class=values["autoscaler_class"],
            metric=values["metric"],
            target=max(MIN_TARGET, total * utilization / 100.0),
            total_target=total,
            target_utilization_percentage=utilization,
            container_concurrency=container_concurrency,
            stable_window_s=stable_window_s,
            # Knative: the panic window is a percentage of the stable window, never under one 1 s bucket.
            panic_window_s=max(1.0, stable_window_s * values["panic_window_percentage"] / 100.0),
            panic_threshold=values["panic_threshold_percentage"] / 100.0,
            max_scale_up_rate=global_config.max_scale_up_rate,
            max_scale_down_rate=global_config.max_scale_down_rate,
            target_burst_capacity=values["target_burst_capacity"],
            activator_capacity=global_config.activator_capacity,
            enable_scale_to_zero=global_config.enable_scale_to_zero,
            scale_to_zero_grace_period_s=global_config.scale_to_zero_grace_period_s,
            scale_to_zero_pod_retention_period_s=values["scale_to_zero_pod_retention_period_s"],
            scale_down_delay_s=values["scale_down_delay_s"],
            min_scale=values["min_scale"],
            max_scale=values["max_scale"],
            initial_scale=values["initial_scale"],
            activation_scale=values["activation_scale"],
            aggregation=values["aggregation"],
            timeout_s=timeout_s,
            scaling_policy=scaling_policy,
            prewarm_lead_s=prewarm_lead_s,
        ),
        errors,
    )


def _describe_default(field_name: str, value: object) -> str:
    if value is None:
        return "the global value"
    if isinstance(value, float):
        return f"{value:g}s" if field_name.endswith("_s") else f"{value:g}"
    return str(value)


def _kapa_annotation(
    spec: ServiceSpec, name: str, parse: Callable[[str], Any], default: Any, errors: list[ConfigError]
) -> Any:
    raw_value = spec.annotations.get(name)
    if raw_value is None:
        return default
    try:
        return parse(raw_value)
    except ValueError as error:
        errors.append(ConfigError(name, str(spec.key), f"{error}; using {default}"))
        return default


def _check_hpa_class(values: dict[str, Any], service: str) -> list[ConfigError]:
    """The HPA class scales on cpu (the default; target in percent of the pods' cpu requests) or memory
    (target in MiB per pod, which has no default)."""
    prefix = KNATIVE_ANNOTATION_PREFIX
    errors = []
    if values["metric"] in (METRIC_CONCURRENCY, METRIC_RPS):
        errors.append(ConfigError(prefix + "metric", service, f"the {CLASS_HPA} class scales on cpu or memory; using cpu"))
        values["metric"] = METRIC_CPU
    if values["metric"] is None:
        values["metric"] = METRIC_CPU
    if values["metric"] == METRIC_MEMORY and values["target"] is None:
        values["metric"] = METRIC_CPU
        errors.append(ConfigError(prefix + "target", service, "metric memory needs a target (MiB per pod); using cpu"))
    if values["metric"] == METRIC_CPU and values["target"] is None:
        values["target"] = float(DEFAULT_HPA_CPU_TARGET_PERCENTAGE)
    return errors


def _check_service_consistency(
    global_config: AutoscalerConfig, values: dict[str, Any], service: str
) -> list[ConfigError]:
    """Rules between a service's values (Knative's revision validation); the offending key is reset."""
    errors: list[ConfigError] = []
    prefix = KNATIVE_ANNOTATION_PREFIX
    if values["initial_scale"] == 0 and not global_config.allow_zero_initial_scale:
        errors.append(
            ConfigError(prefix + "initial-scale", service, "0 needs allow-zero-initial-scale: true globally; using 1")
        )
        values["initial_scale"] = max(1, global_config.initial_scale)
    limit = global_config.max_scale_limit
    if limit > 0 and (values["max_scale"] == 0 or values["max_scale"] > limit):
        errors.append(
            ConfigError(prefix + "max-scale", service, f"must be between 1 and max-scale-limit {limit}; using {limit}")
        )
        values["max_scale"] = limit
    if values["max_scale"] > 0 and values["min_scale"] > values["max_scale"]:
        fallback = global_config.min_scale if global_config.min_scale <= values["max_scale"] else 0
        errors.append(
            ConfigError(
                prefix + "min-scale",
                service,
                f"{values['min_scale']} exceeds max-scale {values['max_scale']}; using {fallback}",
            )
        )
        values["min_scale"] = fallback
    return errors


_DEFAULT_CONFIG = AutoscalerConfig(**_parse_defaults())
assert {f.name for f in fields(AutoscalerConfig)} == {name for name, _ in _GLOBAL_SETTINGS.values()}
