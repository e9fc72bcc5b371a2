"""Structured logs for every Kapa process: one logfmt or JSON line per event, fields as keywords.

    log = get_logger(__name__)
    log.info("scale decision", service="default/hello", desired=3)

prints `ts=... level=info logger=scaler.loop msg="scale decision" service=default/hello desired=3`, which
both people and log pipelines (Loki, Elasticsearch) read without a parser of their own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

_FIELDS = "kapa_fields"


class KapaLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose keyword arguments become structured fields of the line."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        reserved = {"exc_info", "stack_info", "stacklevel", "extra"}
        fields = {key: kwargs.pop(key) for key in list(kwargs) if key not in reserved}
        kwargs.setdefault("extra", {})[_FIELDS] = fields
        return msg, kwargs


def get_logger(name: str) -> KapaLogger:
    return KapaLogger(logging.getLogger(name), {})


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' "=\n'):
        return json.dumps(text)
    return text


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: Mapping[str, object] = getattr(record, _FIELDS, {})
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **fields,
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        if self.as_json:
            return json.dumps(line, default=str)
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in line.items())


def configure(level: str | None = None, as_json: bool | None = None) -> None:
    """Set up the root logger once per process. KAPA_LOG_LEVEL and KAPA_LOG_FORMAT=json override."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = os.environ.get("KAPA_LOG_FORMAT", "logfmt")
    handler.setFormatter(_Formatter(as_json if as_json is not None else fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("KAPA_LOG_LEVEL", "info")).upper())
