"""Reading config-autoscaler from disk: the scaler's `--config`, `kapa up --config` and `kapa simulate --config`.

The parsing itself is kapa.core.settings' (pure, shared by every part); this module only finds the keys in
a file or a mounted ConfigMap directory, so file I/O stays out of the core.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from kapa.core.settings import GLOBAL, AutoscalerConfig, ConfigError


def load_config_file(path: str | Path) -> tuple[AutoscalerConfig, list[ConfigError]]:
    """Read config-autoscaler from a path: a YAML file (a flat mapping of keys, or a ConfigMap manifest whose
    `data` holds them), or a directory of one file per key, as Kubernetes mounts a ConfigMap volume."""
    path = Path(path)
    default = AutoscalerConfig.default()
    if path.is_dir():
        return _load_directory(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        return default, [ConfigError(str(path), GLOBAL, f"cannot read config file: {error}")]
    if document is None:
        return default, []
    if not isinstance(document, Mapping):
        return default, [ConfigError(str(path), GLOBAL, "expected a mapping of keys or a ConfigMap")]
    if document.get("kind") == "ConfigMap" or ("apiVersion" in document and "data" in document):
        data = document.get("data") or {}
        if not isinstance(data, Mapping):
            return default, [ConfigError(str(path), GLOBAL, "the ConfigMap's data is not a mapping")]
        return AutoscalerConfig.from_mapping(data)
    return AutoscalerConfig.from_mapping(document)


def _load_directory(path: Path) -> tuple[AutoscalerConfig, list[ConfigError]]:
    """A ConfigMap volume: each key is a file holding its value. The kubelet's own entries (`..data`, the
    `..<timestamp>` directory it swaps atomically) and other dot-files are not keys; neither are
    subdirectories. A file that cannot be read is an error naming it, and its key keeps the default."""
    data: dict[str, str] = {}
    errors: list[ConfigError] = []
    try:
        entries = sorted(path.iterdir())
    except OSError as error:
        return AutoscalerConfig.default(), [ConfigError(str(path), GLOBAL, f"cannot read config directory: {error}")]
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        try:
            # A value written with `kubectl create configmap --from-file` usually ends in a newline.
            data[entry.name] = entry.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            errors.append(ConfigError(entry.name, GLOBAL, f"cannot read {entry}: {error}; using the default"))
    config, parse_errors = AutoscalerConfig.from_mapping(data)
    return config, errors + parse_errors
