"""kapa.core.settings: config-autoscaler keys and annotations parsed to typed values, with errors that name key
and service; and reading them from a file or a ConfigMap volume (scaler.config_file)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kapa.core.contract import (
    ANNOTATION_CONTAINER_CONCURRENCY,
    ANNOTATION_PREWARM_LEAD,
    ANNOTATION_SCALING_POLICY,
    ANNOTATION_TIMEOUT_SECONDS,
    AUTOSCALER_DEFAULTS,
    KNATIVE_ANNOTATION_PREFIX,
    knative_annotation,
)
from kapa.core.services import ServiceKey, ServiceSpec
from scaler.config_file import load_config_file
from kapa.core.settings import (
    AGGREGATION_LINEAR,
    AGGREGATION_WEIGHTED_EXPONENTIAL,
    AutoscalerConfig,
    ConfigError,
    ServiceConfig,
    _duration_in,
    _float_at_least,
    _int_at_least,
    parse_duration_s,
    service_config,
)

KEY = ServiceKey("shop", "cart")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("60s", 60.0, id="seconds"),
        pytest.param("1m30s", 90.0, id="minutes-and-seconds"),
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("1h", 3600.0, id="hours"),
        pytest.param("1.5m", 90.0, id="fractional-unit"),
        pytest.param("90", 90.0, id="bare-seconds"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("-5s", -5.0, id="negative-parses-range-checks-later"),
        pytest.param(" 2s ", 2.0, id="whitespace"),
    ],
)
def test_durations_go_style_or_bare_seconds(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["abc", "5x", "", "s", "1m30", "--5s", "nan", "inf"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s(text)


def test_defaults_are_knatives() -> None:
    config, errors = AutoscalerConfig.from_mapping({})
    assert errors == []
    assert config == AutoscalerConfig.default()
    assert (config.metric, config.target_utilization_percentage, config.container_concurrency_target_default) == (
        "concurrency",
        70.0,
        100.0,
    )
    assert (config.stable_window_s, config.panic_window_percentage, config.panic_threshold_percentage) == (
        60.0,
        10.0,
        200.0,
    )
    assert (config.max_scale_up_rate, config.max_scale_down_rate, config.target_burst_capacity) == (1000.0, 2.0, 211.0)
    assert (
        config.scale_to_zero_grace_period_s,
        config.scale_to_zero_pod_retention_period_s,
        config.scale_down_delay_s,
    ) == (30.0, 0.0, 0.0)
    assert (config.initial_scale, config.min_scale, config.max_scale, config.activation_scale) == (1, 0, 0, 1)
    assert config.enable_scale_to_zero and not config.allow_zero_initial_scale
    assert config.requests_per_second_target_default == 200.0 and config.activator_capacity == 100.0


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("stable-window", "1m30s", "stable_window_s", 90.0),
        ("stable-window", "6s", "stable_window_s", 6.0),
        ("stable-window", "1h", "stable_window_s", 3600.0),
        ("target-utilization-percentage", "50", "target_utilization_percentage", 50.0),
        ("container-concurrency-target-percentage", "80", "target_utilization_percentage", 80.0),
        ("container-concurrency-target-default", "25", "container_concurrency_target_default", 25.0),
        ("requests-per-second-target-default", "150", "requests_per_second_target_default", 150.0),
        ("panic-threshold-percentage", "110", "panic_threshold_percentage", 110.0),
        ("panic-threshold-percentage", "1000", "panic_threshold_percentage", 1000.0),
        ("panic-window-percentage", "20", "panic_window_percentage", 20.0),
        ("max-scale-up-rate", "10", "max_scale_up_rate", 10.0),
        ("max-scale-down-rate", "4", "max_scale_down_rate", 4.0),
        ("enable-scale-to-zero", "False", "enable_scale_to_zero", False),
        ("scale-to-zero-grace-period", "1m", "scale_to_zero_grace_period_s", 60.0),
        ("scale-to-zero-pod-retention-period", "90s", "scale_to_zero_pod_retention_period_s", 90.0),
        ("scale-down-delay", "15m", "scale_down_delay_s", 900.0),
        ("target-burst-capacity", "-1", "target_burst_capacity", -1.0),
        ("target-burst-capacity", "0", "target_burst_capacity", 0.0),
        ("activator-capacity", "50", "activator_capacity", 50.0),
        ("initial-scale", "3", "initial_scale", 3),
        ("min-scale", "2", "min_scale", 2),
        ("max-scale", "10", "max_scale", 10),
        ("activation-scale", "2", "activation_scale", 2),
        ("metric", "rps", "metric", "rps"),
    ],
)
def test_global_keys_parse_to_typed_fields(key: str, value: str, field: str, expected: object) -> None:
    config, errors = AutoscalerConfig.from_mapping({key: value})
    assert errors == []
    assert getattr(config, field) == expected


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("stable-window", "-5s", "-5s out of range: must be in 6s..3600s; using the default 60s"),
        ("stable-window", "abc", "not a duration: 'abc' (use e.g. 60s, 1m30s, 500ms); using the default 60s"),
        ("stable-window", "5s", "5s out of range: must be in 6s..3600s; using the default 60s"),
        ("stable-window", "2h", "2h out of range: must be in 6s..3600s; using the default 60s"),
        ("stable-window", "60.5s",
         "60.5s must be whole seconds (metrics are kept in 1 s buckets); using the default 60s"),
        ("panic-threshold-percentage", "100", "100 out of range: must be in 110..1000; using the default 200.0"),
        ("panic-threshold-percentage", "1001", "1001 out of range: must be in 110..1000; using the default 200.0"),
        ("panic-threshold-percentage", "lots", "not a number: 'lots'; using the default 200.0"),
        ("panic-window-percentage", "0", "0 out of range: must be in 1..100; using the default 10.0"),
        ("panic-window-percentage", "101", "101 out of range: must be in 1..100; using the default 10.0"),
        ("container-concurrency-target-percentage", "0", "0 out of range: must be in 1..100; using the default 70"),
        ("target-utilization-percentage", "150", "150 out of range: must be in 1..100; using the default 70"),
        ("container-concurrency-target-default", "0", "0 out of range: must be at least 0.01; using the default 100"),
        ("requests-per-second-target-default", "-1", "-1 out of range: must be at least 0.01; using the default 200"),
        ("max-scale-up-rate", "1", "1 out of range: must be above 1; using the default 1000.0"),
        ("max-scale-down-rate", "0.5", "0.5 out of range: must be above 1; using the default 2.0"),
        ("enable-scale-to-zero", "yes", "not true or false: 'yes'; using the default true"),
        ("scale-to-zero-grace-period", "1s", "1s out of range: must be at least 6s; using the default 30s"),
        ("scale-to-zero-grace-period", "-5s", "-5s out of range: must be at least 6s; using the default 30s"),
        ("scale-to-zero-pod-retention-period", "-5s", "-5s out of range: must be in 0s..3600s; using the default 0s"),
        ("scale-down-delay", "2h", "2h out of range: must be in 0s..3600s; using the default 0s"),
        ("scale-down-delay", "soon", "not a duration: 'soon' (use e.g. 60s, 1m30s, 500ms); using the default 0s"),
        ("target-burst-capacity", "-2",
         "-2 out of range: must be -1 (activator always in path) or at least 0; using the default 211"),
        ("activator-capacity", "0", "0 out of range: must be at least 1; using the default 100.0"),
        ("initial-scale", "-1", "-1 out of range: must be at least 0; using the default 1"),
        ("initial-scale", "1.5", "not a whole number: '1.5'; using the default 1"),
        ("min-scale", "x", "not a number: 'x'; using the default 0"),
        ("max-scale", "-1", "-1 out of range: must be at least 0; using the default 0"),
        ("activation-scale", "0", "0 out of range: must be at least 1; using the default 1"),
        ("metric", "cpu", "unsupported metric 'cpu': use concurrency or rps; using the default concurrency"),
        ("max-scale-up-rate", "inf", "not a finite number: 'inf'; using the default 1000.0"),
    ],
)
def test_invalid_global_values_give_an_error_and_keep_the_default(key: str, value: str, message: str) -> None:
    """The message says what is wrong, the allowed range (both ends included unless it says "above") and the
    default used instead; str() names the key and where it came from."""
    config, errors = AutoscalerConfig.from_mapping({key: value})
    assert config == AutoscalerConfig.default()
    assert errors == [ConfigError(key, "global", message)]
    assert str(errors[0]) == f"{key} (global): {message}"


def test_several_errors_keep_the_valid_keys() -> None:
    config, errors = AutoscalerConfig.from_mapping(
        {"stable-window": "-5s", "panic-threshold-percentage": "abc", "max-scale": "4"}
    )
    assert sorted(error.key for error in errors) == ["panic-threshold-percentage", "stable-window"]
    assert config.max_scale == 4 and config.stable_window_s == 60.0


@pytest.mark.parametrize(
    ("data", "key", "field", "expected"),
    [
        pytest.param({"initial-scale": "0"}, "initial-scale", "initial_scale", 1, id="zero-initial-scale-needs-allow"),
        pytest.param({"min-scale": "5", "max-scale": "3"}, "min-scale", "min_scale", 0, id="min-above-max"),
        pytest.param({"max-scale-limit": "10", "max-scale": "20"}, "max-scale", "max_scale", 10, id="max-above-limit"),
        pytest.param({"max-scale-limit": "10"}, "max-scale", "max_scale", 10, id="unbounded-max-with-limit"),
    ],
)
def test_global_rules_between_keys(data: dict[str, str], key: str, field: str, expected: int) -> None:
    config, errors = AutoscalerConfig.from_mapping(data)
    assert [error.key for error in errors] == [key]
    assert getattr(config, field) == expected


def test_zero_initial_scale_when_allowed() -> None:
    config, errors = AutoscalerConfig.from_mapping({"initial-scale": "0", "allow-zero-initial-scale": "true"})
    assert errors == [] and config.initial_scale == 0


def test_unknown_keys_are_reported_and_examples_ignored() -> None:
    config, errors = AutoscalerConfig.from_mapping({"stable-windw": "30s", "_example": "# docs"})
    assert errors == [ConfigError("stable-windw", "global", "unknown config-autoscaler key, ignored")]
    assert config == AutoscalerConfig.default()


def test_every_contract_default_parses() -> None:
    config, errors = AutoscalerConfig.from_mapping(dict(AUTOSCALER_DEFAULTS))
    assert errors == [] and config == AutoscalerConfig.default()


# --- files -----------------------------------------------------------------------------------------------------


def test_load_file_flat_mapping_with_yaml_types(tmp_path: Path) -> None:
    path = tmp_path / "autoscaler.yaml"
    path.write_text("stable-window: 30s\nenable-scale-to-zero: false\ncontainer-concurrency-target-percentage: 80\n")
    config, errors = load_config_file(path)
    assert errors == []
    assert (config.stable_window_s, config.enable_scale_to_zero, config.target_utilization_percentage) == (
        30.0,
        False,
        80.0,
    )


def test_load_file_configmap_manifest(tmp_path: Path) -> None:
    path = tmp_path / "config-autoscaler.yaml"
    path.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n  namespace: knative-serving\n"
        'data:\n  _example: "long docs"\n  scale-to-zero-grace-period: "45s"\n  max-scale-up-rate: "abc"\n'
    )
    config, errors = load_config_file(path)
    assert config.scale_to_zero_grace_period_s == 45.0 and config.max_scale_up_rate == 1000.0
    assert [(error.key, error.service) for error in errors] == [("max-scale-up-rate", "global")]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param("stable-window: [unclosed\n", "cannot read config file", id="invalid-yaml"),
        pytest.param("- a\n- b\n", "expected a mapping", id="a-list"),
        pytest.param("kind: ConfigMap\ndata: [1]\n", "not a mapping", id="data-not-mapping"),
        pytest.param(None, "cannot read config file", id="missing-file"),
    ],
)
def test_load_file_problems_are_errors_not_exceptions(tmp_path: Path, content: str | None, problem: str) -> None:
    path = tmp_path / "autoscaler.yaml"
    if content is not None:
        path.write_text(content)
    config, errors = load_config_file(path)
    assert config == AutoscalerConfig.default()
    assert len(errors) == 1 and problem in errors[0].message and errors[0].service == "global"


def test_load_file_empty_is_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config_file(path) == (AutoscalerConfig.default(), [])


def configmap_volume(directory: Path, data: dict[str, bytes]) -> Path:
    """Lay out `data` as the kubelet mounts a ConfigMap: the values in a timestamped directory, `..data` a
    symlink to it, and each key a symlink through `..data`."""
    directory.mkdir()
    versioned = directory / "..2026_11_29_11_00_00.123456789"
    versioned.mkdir()
    for key, value in data.items():
        (versioned / key).write_bytes(value)
    (directory / "..data").symlink_to(versioned.name)
    for key in data:
        (directory / key).symlink_to(f"..data/{key}")
    return directory


def test_load_file_configmap_volume_directory(tmp_path: Path) -> None:
    volume = configmap_volume(
        tmp_path / "config-autoscaler",
        {
            "stable-window": b"30s",
            "enable-scale-to-zero": b"false\n",  # --from-file keeps the trailing newline
            "_example": b"# Knative's long documentation block\nstable-window: 1h\n",
            "max-scale-up-rate": b"abc",
        },
    )
    (volume / ".hidden").write_text("stable-window: 2h")  # dot-files are not keys
    (volume / "nested").mkdir()  # neither are directories
    config, errors = load_config_file(volume)
    assert (config.stable_window_s, config.enable_scale_to_zero, config.max_scale_up_rate) == (30.0, False, 1000.0)
    assert [(error.key, error.service) for error in errors] == [("max-scale-up-rate", "global")]


def test_load_file_directory_unreadable_key_keeps_its_default(tmp_path: Path) -> None:
    volume = configmap_volume(tmp_path / "config", {"stable-window": b"\xff\xfe", "max-scale-up-rate": b"50"})
    config, errors = load_config_file(volume)
    assert (config.stable_window_s, config.max_scale_up_rate) == (60.0, 50.0)
    assert len(errors) == 1 and errors[0].key == "stable-window" and "cannot read" in errors[0].message


def test_load_file_empty_directory_is_defaults(tmp_path: Path) -> None:
    assert load_config_file(tmp_path) == (AutoscalerConfig.default(), [])


# --- per-service annotations ---------------------------------------------------------------------------------------


def spec(annotations: dict[str, str]) -> ServiceSpec:
    full = {}
    for name, value in annotations.items():
        full[name if "/" in name else knative_annotation(name)] = value
    return ServiceSpec(KEY, full)


@pytest.mark.parametrize(
    ("annotations", "field", "expected"),
    [
        pytest.param({}, "target", 70.0, id="default-total-100-at-70pct"),
        pytest.param({ANNOTATION_CONTAINER_CONCURRENCY: "10"}, "target", 7.0, id="containerConcurrency-is-total"),
        pytest.param(
            {ANNOTATION_CONTAINER_CONCURRENCY: "10"}, "total_target", 10.0, id="total-is-containerConcurrency"
        ),
        pytest.param({"target": "10", "target-utilization-percentage": "100"}, "target", 10.0, id="target-at-100pct"),
        pytest.param({"target": "10"}, "target", 7.0, id="target-annotation-replaces-total"),
        pytest.param(
            {"target": "50", ANNOTATION_CONTAINER_CONCURRENCY: "10"}, "total_target", 10.0, id="target-capped-at-cc"
        ),
        pytest.param({"target": "0.01", "target-utilization-percentage": "1"}, "target", 0.01, id="never-below-0.01"),
        pytest.param({"metric": "rps"}, "target", 140.0, id="rps-default-200-at-70pct"),
        pytest.param({"metric": "rps", ANNOTATION_CONTAINER_CONCURRENCY: "10"}, "target", 140.0, id="rps-ignores-cc"),
        pytest.param({"window": "2m"}, "stable_window_s", 120.0, id="window"),
        pytest.param({"window": "2m"}, "panic_window_s", 12.0, id="panic-window-follows-window"),
        pytest.param({"panic-window-percentage": "50"}, "panic_window_s", 30.0, id="panic-window-percentage"),
        pytest.param(
            {"window": "6s", "panic-window-percentage": "1"}, "panic_window_s", 1.0, id="panic-window-at-least-1s"
        ),
        pytest.param({"panic-threshold-percentage": "150"}, "panic_threshold", 1.5, id="threshold-as-ratio"),
        pytest.param({"target-burst-capacity": "-1"}, "target_burst_capacity", -1.0, id="tbc"),
        pytest.param({"scale-down-delay": "1m"}, "scale_down_delay_s", 60.0, id="scale-down-delay"),
        pytest.param(
            {"scale-to-zero-pod-retention-period": "1m30s"},
            "scale_to_zero_pod_retention_period_s",
            90.0,
            id="retention",
        ),
        pytest.param({"min-scale": "1", "max-scale": "3"}, "max_scale", 3, id="max-scale"),
        pytest.param({"min-scale": "1", "max-scale": "3"}, "min_scale", 1, id="min-scale"),
        pytest.param({"initial-scale": "4"}, "initial_scale", 4, id="initial-scale"),
        pytest.param({"activation-scale": "3"}, "activation_scale", 3, id="activation-scale"),
        pytest.param(
            {"metric-aggregation-algorithm": "weightedExponential"},
            "aggregation",
            AGGREGATION_WEIGHTED_EXPONENTIAL,
            id="knative-spelling",
        ),
        pytest.param(
            {"metric-aggregation-algorithm": "weighted-exponential"},
            "aggregation",
            AGGREGATION_WEIGHTED_EXPONENTIAL,
            id="kebab-spelling",
        ),
        pytest.param({}, "aggregation", AGGREGATION_LINEAR, id="linear-by-default"),
        pytest.param({ANNOTATION_TIMEOUT_SECONDS: "30"}, "timeout_s", 30.0, id="timeout"),
        pytest.param({}, "timeout_s", 300.0, id="default-timeout"),
        pytest.param({}, "container_concurrency", 0, id="default-cc-unlimited"),
        pytest.param(
            {KNATIVE_ANNOTATION_PREFIX + "class": "kpa.autoscaling.knative.dev"},
            "target",
            70.0,
            id="kpa-class-accepted",
        ),
        pytest.param({"other.io/window": "bad"}, "stable_window_s", 60.0, id="foreign-annotations-ignored"),
    ],
)
def test_annotations_override_global(annotations: dict[str, str], field: str, expected: object) -> None:
    config, errors = service_config(AutoscalerConfig.default(), spec(annotations))
    assert errors == []
    assert (
        getattr(config, field) == pytest.approx(expected)
        if isinstance(expected, float)
        else getattr(config, field) == expected
    )


def test_service_inherits_global_values() -> None:
    global_config, _ = AutoscalerConfig.from_mapping(
        {"stable-window": "30s", "scale-to-zero-grace-period": "10s", "max-scale-up-rate": "3"}
    )
    config, errors = service_config(global_config, spec({}))
    assert errors == []
    assert (
        config.stable_window_s,
        config.panic_window_s,
        config.scale_to_zero_grace_period_s,
        config.max_scale_up_rate,
    ) == (30.0, 3.0, 10.0, 3.0)
    assert config.key == KEY


@pytest.mark.parametrize(
    ("annotation", "value", "field", "fallback"),
    [
        ("window", "-5s", "stable_window_s", 60.0),
        ("window", "abc", "stable_window_s", 60.0),
        ("window", "3s", "stable_window_s", 60.0),
        ("panic-threshold-percentage", "5000", "panic_threshold", 2.0),
        ("panic-threshold-percentage", "x", "panic_threshold", 2.0),
        ("panic-window-percentage", "0", "panic_window_s", 6.0),
        ("target", "0", "target", 70.0),
        ("target", "ten", "target", 70.0),
        ("target-utilization-percentage", "0", "target", 70.0),
        ("target-burst-capacity", "-7", "target_burst_capacity", 211.0),
        ("scale-down-delay", "-1s", "scale_down_delay_s", 0.0),
        ("scale-to-zero-pod-retention-period", "forever", "scale_to_zero_pod_retention_period_s", 0.0),
        ("min-scale", "-1", "min_scale", 0),
        ("max-scale", "2.5", "max_scale", 0),
        ("initial-scale", "-3", "initial_scale", 1),
        ("activation-scale", "0", "activation_scale", 1),
        ("metric", "memory", "metric", "concurrency"),
        ("metric-aggregation-algorithm", "median", "aggregation", AGGREGATION_LINEAR),
    ],
)
def test_invalid_annotations_name_key_and_service_and_use_the_global_value(
    annotation: str, value: str, field: str, fallback: object
) -> None:
    config, errors = service_config(AutoscalerConfig.default(), spec({annotation: value}))
    assert getattr(config, field) == fallback
    assert len(errors) == 1
    assert (errors[0].key, errors[0].service) == (knative_annotation(annotation), "shop/cart")
    assert "shop/cart" in str(errors[0]) and knative_annotation(annotation) in str(errors[0])


@pytest.mark.parametrize(
    ("name", "value", "field", "fallback"),
    [
        (ANNOTATION_CONTAINER_CONCURRENCY, "-1", "container_concurrency", 0),
        (ANNOTATION_CONTAINER_CONCURRENCY, "many", "container_concurrency", 0),
        (ANNOTATION_CONTAINER_CONCURRENCY, "2000", "container_concurrency", 0),
        (ANNOTATION_TIMEOUT_SECONDS, "0", "timeout_s", 300.0),
        (ANNOTATION_TIMEOUT_SECONDS, "601", "timeout_s", 300.0),
        (KNATIVE_ANNOTATION_PREFIX + "minScale", "1", "min_scale", 0),
        (KNATIVE_ANNOTATION_PREFIX + "class", "custom.example.com", "autoscaler_class", "kpa.autoscaling.knative.dev"),
        (KNATIVE_ANNOTATION_PREFIX + "metric", "cpu", "metric", "concurrency"),  # cpu needs the HPA class
        (ANNOTATION_SCALING_POLICY, "ahpa", "scaling_policy", "knative"),
        (ANNOTATION_PREWARM_LEAD, "-1s", "prewarm_lead_s", 10.0),
        (ANNOTATION_PREWARM_LEAD, "11m", "prewarm_lead_s", 10.0),
    ],
)
def test_other_rejected_annotations(name: str, value: str, field: str, fallback: object) -> None:
    config, errors = service_config(AutoscalerConfig.default(), spec({name: value}))
    assert getattr(config, field) == fallback
    assert [(error.key, error.service) for error in errors] == [(name, "shop/cart")]


@pytest.mark.parametrize(
    ("global_keys", "annotations", "key", "field", "expected"),
    [
        pytest.param(
            {}, {"initial-scale": "0"}, "initial-scale", "initial_scale", 1, id="zero-initial-scale-needs-global-allow"
        ),
        pytest.param({}, {"min-scale": "4", "max-scale": "3"}, "min-scale", "min_scale", 0, id="min-above-max"),
        pytest.param(
            {"min-scale": "2"},
            {"min-scale": "4", "max-scale": "3"},
            "min-scale",
            "min_scale",
            2,
            id="min-falls-back-to-global",
        ),
        pytest.param(
            {"max-scale-limit": "5", "max-scale": "5"},
            {"max-scale": "8"},
            "max-scale",
            "max_scale",
            5,
            id="max-above-limit",
        ),
    ],
)
def test_annotation_rules_between_keys(
    global_keys: dict[str, str], annotations: dict[str, str], key: str, field: str, expected: int
) -> None:
    global_config, global_errors = AutoscalerConfig.from_mapping(global_keys)
    assert global_errors == []
    config, errors = service_config(global_config, spec(annotations))
    assert [(error.key, error.service) for error in errors] == [(knative_annotation(key), "shop/cart")]
    assert getattr(config, field) == expected


def test_zero_initial_scale_annotation_when_allowed_globally() -> None:
    global_config, _ = AutoscalerConfig.from_mapping({"allow-zero-initial-scale": "true"})
    config, errors = service_config(global_config, spec({"initial-scale": "0"}))
    assert errors == [] and config.initial_scale == 0


@pytest.mark.parametrize(
    ("annotations", "metric", "total_target", "rejected"),
    [
        pytest.param({}, "cpu", 80.0, [], id="cpu-by-default-at-80-percent"),
        pytest.param({"metric": "cpu", "target": "60"}, "cpu", 60.0, [], id="cpu-target-in-percent"),
        pytest.param({"metric": "memory", "target": "256"}, "memory", 256.0, [], id="memory-target-in-mib"),
        pytest.param({"metric": "memory"}, "cpu", 80.0, ["target"], id="memory-needs-a-target"),
        pytest.param({"metric": "rps"}, "cpu", 80.0, ["metric"], id="kpa-metrics-are-not-the-hpas"),
    ],
)
def test_hpa_class_scales_on_cpu_or_memory(
    annotations: dict[str, str], metric: str, total_target: float, rejected: list[str]
) -> None:
    named = {KNATIVE_ANNOTATION_PREFIX + "class": "hpa.autoscaling.knative.dev",
             **{KNATIVE_ANNOTATION_PREFIX + key: value for key, value in annotations.items()}}
    config, errors = service_config(AutoscalerConfig.default(), spec(named))
    assert (config.autoscaler_class, config.metric, config.total_target) == (
        "hpa.autoscaling.knative.dev", metric, total_target)
    assert [error.key for error in errors] == [KNATIVE_ANNOTATION_PREFIX + key for key in rejected]


# --- exact messages and bounds -------------------------------------------------------------------------------------
# What the user reads for the rules between keys, for files and for annotations, and where each range ends (both
# ends inclusive unless the range says "above"): a changed bound or a lost word in a message fails a test.


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"initial-scale": "0"}, "initial-scale (global): 0 needs allow-zero-initial-scale: true; using 1"),
        ({"min-scale": "5", "max-scale": "3"}, "min-scale (global): 5 exceeds max-scale 3; using 0"),
        ({"min-scale": "2", "max-scale": "1"}, "min-scale (global): 2 exceeds max-scale 1; using 0"),
        ({"max-scale-limit": "10", "max-scale": "20"},
         "max-scale (global): must be between 1 and max-scale-limit 10; using 10"),
        ({"max-scale-limit": "1"}, "max-scale (global): must be between 1 and max-scale-limit 1; using 1"),
        ({"min-scale": "3", "max-scale": "3"}, None),
        ({"max-scale-limit": "10", "max-scale": "10"}, None),
    ],
)
def test_global_rule_messages(data: dict[str, str], error: str | None) -> None:
    assert [str(e) for e in AutoscalerConfig.from_mapping(data)[1]] == ([error] if error else [])


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("stable-window", "6s", "stable_window_s", 6.0),
        ("stable-window", "3600s", "stable_window_s", 3600.0),
        ("stable-window", "+90s", "stable_window_s", 90.0),
        ("scale-down-delay", "1.5s", "scale_down_delay_s", 1.5),  # only the windows need whole seconds
        ("scale-down-delay", "0s", "scale_down_delay_s", 0.0),
        ("scale-down-delay", "1h", "scale_down_delay_s", 3600.0),
        ("panic-threshold-percentage", "110", "panic_threshold_percentage", 110.0),
        ("panic-threshold-percentage", "1000", "panic_threshold_percentage", 1000.0),
        ("container-concurrency-target-default", "0.01", "container_concurrency_target_default", 0.01),
        ("activator-capacity", "1", "activator_capacity", 1.0),
        ("max-scale-down-rate", "1.01", "max_scale_down_rate", 1.01),
        ("activation-scale", "1", "activation_scale", 1),
        ("min-scale", "0", "min_scale", 0),
    ],
)
def test_values_at_the_ends_of_their_range_are_accepted(key: str, value: str, field: str, expected: object) -> None:
    config, errors = AutoscalerConfig.from_mapping({key: value})
    assert errors == [] and getattr(config, field) == expected


def test_documentation_keys_are_skipped_wherever_they_are() -> None:
    config, errors = AutoscalerConfig.from_mapping({"_example": "# docs", "max-scale": "4", "_other": "", "min-scale": "1"})
    assert errors == [] and (config.max_scale, config.min_scale) == (4, 1)


def test_load_file_yaml_booleans_are_their_text(tmp_path: Path) -> None:
    path = tmp_path / "autoscaler.yaml"
    path.write_text("allow-zero-initial-scale: true\ninitial-scale: 0\n")
    config, errors = load_config_file(path)
    assert errors == [] and (config.allow_zero_initial_scale, config.initial_scale) == (True, 0)


@pytest.mark.parametrize(
    ("document", "errors", "max_scale"),
    [
        # apiVersion and data without a kind is still a manifest; data alone is a flat mapping's unknown key.
        ("apiVersion: v1\ndata:\n  max-scale: '3'\n", [], 3),
        ("data:\n  max-scale: '3'\n", [ConfigError("data", "global", "unknown config-autoscaler key, ignored")], 0),
        ("apiVersion: v1\nmax-scale: '3'\n",
         [ConfigError("apiVersion", "global", "unknown config-autoscaler key, ignored")], 3),
    ],
)
def test_load_file_tells_a_manifest_from_a_flat_mapping(
    tmp_path: Path, document: str, errors: list[ConfigError], max_scale: int
) -> None:
    path = tmp_path / "autoscaler.yaml"
    path.write_text(document)
    config, found = load_config_file(path)
    assert found == errors and config.max_scale == max_scale


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("- a\n- b\n", "expected a mapping of keys or a ConfigMap", id="a-list"),
        pytest.param("kind: ConfigMap\ndata: [1]\n", "the ConfigMap's data is not a mapping", id="data-not-mapping"),
    ],
)
def test_load_file_problems_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "autoscaler.yaml"
    path.write_text(content)
    assert load_config_file(path) == (AutoscalerConfig.default(), [ConfigError(str(path), "global", message)])


def test_load_file_missing_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    config, errors = load_config_file(path)
    assert [(error.key, error.service) for error in errors] == [(str(path), "global")]
    assert errors[0].message.startswith("cannot read config file: [Errno 2] No such file or directory")


def test_load_file_unlistable_directory_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", refuse)
    assert load_config_file(tmp_path) == (
        AutoscalerConfig.default(),
        [ConfigError(str(tmp_path), "global", "cannot read config directory: [Errno 13] Permission denied")],
    )


def test_load_file_directory_unreadable_key_message(tmp_path: Path) -> None:
    volume = configmap_volume(tmp_path / "config", {"stable-window": b"\xff"})
    _, errors = load_config_file(volume)
    reason = "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    assert errors == [
        ConfigError("stable-window", "global", f"cannot read {volume / 'stable-window'}: {reason}; using the default")
    ]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (knative_annotation("window"), "-5s", "-5s out of range: must be in 6s..3600s; using 60s"),
        (knative_annotation("panic-threshold-percentage"), "x", "not a number: 'x'; using 200"),
        (knative_annotation("metric"), "memory",
         "memory needs autoscaling.knative.dev/class: hpa.autoscaling.knative.dev; using concurrency"),
        (knative_annotation("min-scale"), "-1", "-1 out of range: must be at least 0; using 0"),
        (knative_annotation("class"), "custom",
         "unknown autoscaler class 'custom': use kpa.autoscaling.knative.dev or hpa.autoscaling.knative.dev; "
         "using kpa.autoscaling.knative.dev"),
        (knative_annotation("metric-aggregation-algorithm"), "median",
         "unknown algorithm 'median': use linear or weightedExponential; using linear"),
        (knative_annotation("target"), "ten", "not a number: 'ten'; using the global value"),
        (knative_annotation("metric"), "bytes",
         "unsupported metric 'bytes': use concurrency or rps (or, with the hpa.autoscaling.knative.dev class, cpu "
         "or memory); using the global value"),
        (ANNOTATION_CONTAINER_CONCURRENCY, "2000", "2000 out of range: must be in 0..1000; using 0"),
        (ANNOTATION_CONTAINER_CONCURRENCY, "1.5", "not a whole number: '1.5'; using 0"),
        (ANNOTATION_TIMEOUT_SECONDS, "0", "0 out of range: must be above 0 and at most 600; using 300.0"),
        (KNATIVE_ANNOTATION_PREFIX + "minScale", "1", "not an autoscaling annotation Kapa honours, ignored"),
        (ANNOTATION_SCALING_POLICY, "Predictive ",
         "unknown scaling policy 'Predictive ': use knative or predictive; using knative"),
        (ANNOTATION_PREWARM_LEAD, "soon", "not a duration: 'soon' (use e.g. 60s, 1m30s, 500ms); using 10.0"),
        (ANNOTATION_PREWARM_LEAD, "11m", "11m out of range: must be in 0s..600s; using 10.0"),
    ],
)
def test_annotation_error_messages(name: str, value: str, message: str) -> None:
    assert service_config(AutoscalerConfig.default(), spec({name: value}))[1] == [ConfigError(name, "shop/cart", message)]


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        (ANNOTATION_CONTAINER_CONCURRENCY, "0", "container_concurrency", 0),
        (ANNOTATION_CONTAINER_CONCURRENCY, "1000", "container_concurrency", 1000),
        (ANNOTATION_TIMEOUT_SECONDS, "0.5", "timeout_s", 0.5),
        (ANNOTATION_TIMEOUT_SECONDS, "600", "timeout_s", 600.0),
        (knative_annotation("metric-aggregation-algorithm"), "LINEAR", "aggregation", AGGREGATION_LINEAR),
        (ANNOTATION_SCALING_POLICY, " predictive", "scaling_policy", "predictive"),
        (ANNOTATION_SCALING_POLICY, "knative", "scaling_policy", "knative"),
        (ANNOTATION_PREWARM_LEAD, "0s", "prewarm_lead_s", 0.0),
        (ANNOTATION_PREWARM_LEAD, "10m", "prewarm_lead_s", 600.0),
    ],
)
def test_annotation_values_at_the_ends_of_their_range(name: str, value: str, field: str, expected: object) -> None:
    config, errors = service_config(AutoscalerConfig.default(), spec({name: value}))
    assert errors == [] and getattr(config, field) == expected


def test_every_annotation_is_read_whatever_comes_before_it() -> None:
    annotations = {"example.com/other": "x", KNATIVE_ANNOTATION_PREFIX + "minScale": "9", "min-scale": "2", "max-scale": "5"}
    config, errors = service_config(AutoscalerConfig.default(), spec(annotations))
    assert [error.key for error in errors] == [KNATIVE_ANNOTATION_PREFIX + "minScale"]
    assert (config.min_scale, config.max_scale) == (2, 5)


@pytest.mark.parametrize(
    ("annotations", "target", "total_target"),
    [
        pytest.param({"container-concurrency": "1"}, 0.7, 1.0, id="containerConcurrency-1-is-the-total"),
        pytest.param({"container-concurrency": "1", "target": "5"}, 0.7, 1.0, id="target-capped-at-1"),
        pytest.param({"container-concurrency": "10", "target": "10"}, 7.0, 10.0, id="target-equal-to-the-limit"),
    ],
)
def test_target_from_container_concurrency(annotations: dict[str, str], target: float, total_target: float) -> None:
    named = {ANNOTATION_CONTAINER_CONCURRENCY if key == "container-concurrency" else key: value
             for key, value in annotations.items()}
    config, errors = service_config(AutoscalerConfig.default(), spec(named))
    assert errors == [] and (config.target, config.total_target) == (pytest.approx(target), total_target)


def test_a_service_config_carries_every_global_value_it_does_not_override() -> None:
    global_config, _ = AutoscalerConfig.from_mapping({
        "max-scale-down-rate": "3", "activator-capacity": "50", "enable-scale-to-zero": "false",
        "container-concurrency-target-percentage": "50", "max-scale-up-rate": "4", "scale-to-zero-grace-period": "40s",
    })
    config, errors = service_config(global_config, spec({}))
    assert errors == []
    assert config == ServiceConfig(
        key=KEY, autoscaler_class="kpa.autoscaling.knative.dev", metric="concurrency", target=50.0, total_target=100.0,
        target_utilization_percentage=50.0, container_concurrency=0, stable_window_s=60.0, panic_window_s=6.0,
        panic_threshold=2.0, max_scale_up_rate=4.0, max_scale_down_rate=3.0, target_burst_capacity=211.0,
        activator_capacity=50.0, enable_scale_to_zero=False, scale_to_zero_grace_period_s=40.0,
        scale_to_zero_pod_retention_period_s=0.0, scale_down_delay_s=0.0, min_scale=0, max_scale=0, initial_scale=1,
        activation_scale=1, aggregation=AGGREGATION_LINEAR, timeout_s=300.0, scaling_policy="knative",
        prewarm_lead_s=10.0,
    )


@pytest.mark.parametrize(
    ("global_keys", "annotations", "errors", "min_scale", "max_scale"),
    [
        pytest.param({}, {"initial-scale": "0"},
                     ["initial-scale: 0 needs allow-zero-initial-scale: true globally; using 1"], 0, 0, id="zero-initial"),
        pytest.param({"max-scale-limit": "1", "max-scale": "1"}, {"max-scale": "0"},
                     ["max-scale: must be between 1 and max-scale-limit 1; using 1"], 0, 1, id="unbounded-under-limit-1"),
        pytest.param({"max-scale-limit": "5", "max-scale": "5"}, {"max-scale": "3"}, [], 0, 3, id="under-the-limit"),
        pytest.param({"max-scale-limit": "5", "max-scale": "5"}, {"max-scale": "5"}, [], 0, 5, id="at-the-limit"),
        pytest.param({}, {"min-scale": "4"}, [], 4, 0, id="min-without-max"),
        pytest.param({}, {"min-scale": "3", "max-scale": "3"}, [], 3, 3, id="min-equal-to-max"),
        pytest.param({}, {"min-scale": "2", "max-scale": "1"},
                     ["min-scale: 2 exceeds max-scale 1; using 0"], 0, 1, id="min-above-max-1"),
        pytest.param({"min-scale": "2"}, {"min-scale": "4", "max-scale": "1"},
                     ["min-scale: 4 exceeds max-scale 1; using 0"], 0, 1, id="global-min-above-max-too"),
        pytest.param({"min-scale": "3"}, {"min-scale": "4", "max-scale": "3"},
                     ["min-scale: 4 exceeds max-scale 3; using 3"], 3, 3, id="global-min-equal-to-max"),
    ],
)
def test_annotation_rule_messages(
    global_keys: dict[str, str], annotations: dict[str, str], errors: list[str], min_scale: int, max_scale: int
) -> None:
    global_config, global_errors = AutoscalerConfig.from_mapping(global_keys)
    assert global_errors == []
    config, found = service_config(global_config, spec(annotations))
    assert [f"{error.key.removeprefix(KNATIVE_ANNOTATION_PREFIX)}: {error.message}" for error in found] == errors
    assert all(error.service == "shop/cart" for error in found)
    assert (config.min_scale, config.max_scale) == (min_scale, max_scale)


@pytest.mark.parametrize(
    ("annotations", "errors"),
    [
        pytest.param({"metric": "rps"}, ["metric: the hpa.autoscaling.knative.dev class scales on cpu or memory; using cpu"],
                     id="kpa-metric"),
        pytest.param({"metric": "memory"}, ["target: metric memory needs a target (MiB per pod); using cpu"],
                     id="memory-without-target"),
        # An error before the class's own check is kept.
        pytest.param({"metric": "rps", "min-scale": "x"},
                     ["min-scale: not a number: 'x'; using 0",
                      "metric: the hpa.autoscaling.knative.dev class scales on cpu or memory; using cpu"], id="both"),
    ],
)
def test_hpa_class_messages(annotations: dict[str, str], errors: list[str]) -> None:
    named = {KNATIVE_ANNOTATION_PREFIX + "class": "hpa.autoscaling.knative.dev",
             **{KNATIVE_ANNOTATION_PREFIX + key: value for key, value in annotations.items()}}
    config, found = service_config(AutoscalerConfig.default(), spec(named))
    assert [f"{error.key.removeprefix(KNATIVE_ANNOTATION_PREFIX)}: {error.message}" for error in found] == errors
    assert all(error.service == "shop/cart" for error in found) and config.metric == "cpu"


@pytest.mark.parametrize(
    ("factory", "args", "options", "text", "problem"),
    [
        (_float_at_least, (1.0,), {"high": 100.0}, "0", "0 out of range: must be in 1..100"),
        (_float_at_least, (1.0,), {"high": 100.0}, "100", None),
        (_float_at_least, (1.0,), {}, "0.5", "0.5 out of range: must be at least 1"),
        (_float_at_least, (1.0,), {}, "1", None),
        (_float_at_least, (1.0,), {"exclusive": True}, "1", "1 out of range: must be above 1"),
        (_float_at_least, (0.0,), {"exclusive": True, "high": 600.0}, "0", "0 out of range: must be above 0 and at most 600"),
        (_float_at_least, (0.0,), {"exclusive": True, "high": 600.0}, "601", "601 out of range: must be above 0 and at most 600"),
        (_float_at_least, (0.0,), {"exclusive": True, "high": 600.0}, "600", None),
        (_int_at_least, (0,), {}, "-1", "-1 out of range: must be at least 0"),
        (_int_at_least, (0,), {}, "0", None),
        (_int_at_least, (0, 1000), {}, "1001", "1001 out of range: must be in 0..1000"),
        (_int_at_least, (0, 1000), {}, "1000", None),
        (_int_at_least, (0,), {}, "2.5", "not a whole number: '2.5'"),
        (_duration_in, (6.0, 3600.0), {"whole_seconds": True}, "5s", "5s out of range: must be in 6s..3600s"),
        (_duration_in, (6.0, 3600.0), {"whole_seconds": True}, "3601s", "3601s out of range: must be in 6s..3600s"),
        (_duration_in, (6.0, 3600.0), {"whole_seconds": True}, "6s", None),
        (_duration_in, (6.0, 3600.0), {"whole_seconds": True}, "1h", None),
        (_duration_in, (6.0, 3600.0), {"whole_seconds": True}, "60.5s",
         "60.5s must be whole seconds (metrics are kept in 1 s buckets)"),
        (_duration_in, (6.0,), {}, "1s", "1s out of range: must be at least 6s"),
        (_duration_in, (6.0,), {}, "6.5s", None),
        (_duration_in, (6.0,), {}, "100h", None),
        (_duration_in, (6.0,), {}, "abc", "not a duration: 'abc' (use e.g. 60s, 1m30s, 500ms)"),
    ],
)
def test_range_parsers_state_their_range(
    factory: Callable[..., Callable[[str], object]], args: tuple[object, ...], options: dict[str, object], text: str,
    problem: str | None,
) -> None:
    """The parser factories on their own. The module builds most of its parsers once, at import; a parser
    built here is built by the code under test (mutation testing sees a change to the factory only then)."""
    parse = factory(*args, **options)
    if problem is None:
        parse(text)
    else:
        with pytest.raises(ValueError) as raised:
            parse(text)
        assert str(raised.value) == problem


@pytest.mark.parametrize("boolean", ["true", "false"])
def test_a_yaml_boolean_for_a_number_is_named_as_written(tmp_path: Path, boolean: str) -> None:
    path = tmp_path / "autoscaler.yaml"
    path.write_text(f"min-scale: {boolean}\n")
    _, errors = load_config_file(path)
    assert errors == [ConfigError("min-scale", "global", f"not a number: '{boolean}'; using the default 0")]


def test_the_predictive_policy_needs_kapas_own_class() -> None:
    """The HPA class's pods are the Kubernetes HPA's to set: no policy of Kapa's can adjust them."""
    annotations = {KNATIVE_ANNOTATION_PREFIX + "class": "hpa.autoscaling.knative.dev", ANNOTATION_SCALING_POLICY: "predictive"}
    config, errors = service_config(AutoscalerConfig.default(), spec(annotations))
    assert config.scaling_policy == "knative"
    assert errors == [ConfigError(ANNOTATION_SCALING_POLICY, "shop/cart",
                                  "predictive needs Kapa's own autoscaler class, not hpa.autoscaling.knative.dev; "
                                  "using knative")]
