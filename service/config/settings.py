"""The process's settings: one typed object read from the environment once, at each entry point
(`python -m service`, `python -m gateway.run`), and passed down from there. Each setting has one
name (its field's, upper-cased) and one default, here; README's settings table lists the same
(tests/unit/test_settings.py holds the two together). Config file values are not settings: the
config file (service.config.file) says what a reload may change, settings only what a start does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


def _cores() -> int:
    return os.cpu_count() or 1


def _half_the_cores() -> int:
    return max(1, _cores() // 2)


@dataclass(frozen=True, slots=True)
class Settings:
    """The environment variables batchgate reads, by field (the variable is the field's name in
    capitals; `metadata["doc"]` is the default as README words it when it is not the value itself)."""

    config: str | None = field(default=None, metadata={"doc": "(sandbox mode)"})
    http_port: int = 8080
    grpc_port: int = 50051
    admin_port: int = 9901
    bind_host: str = "127.0.0.1"
    workers: int = field(default_factory=_cores, metadata={"doc": "one per core"})
    envoy_concurrency: int = field(default_factory=_half_the_cores, metadata={"doc": "half the cores"})
    # Worker i serves /metrics on metrics_port + i; 0 turns it off.
    metrics_port: int = 9464
    metrics_host: str = "127.0.0.1"
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"
    drain_delay_seconds: float = 3.0
    sandbox_cancel_delay_s: float = 3.0
    request_read_timeout_seconds: float = 10.0
    # The embedded rate-limit store's SQLite file the workers of one machine share; None:
    # rate-limits.sqlite3 in the state directory.
    batchgate_rate_limit_db: str | None = None
    # Where state that must outlive a restart lives, and nothing else (service.infra.state): the
    # embedded rate-limit store's rate-limits.sqlite3 and the operations' operations.sqlite3 (unused
    # with a Redis governance.store); never a temporary directory. BATCHGATE_OPERATIONS_DB names
    # another file for the operations.
    state_dir: str = "build/state"
    batchgate_operations_db: str | None = None
    # The OpenTelemetry SDK's own variables that decide whether tracing is on (the SDK reads the
    # rest of the standard OTEL_* variables itself).
    otel_traces_exporter: str = ""
    otel_exporter_otlp_endpoint: str = ""
    otel_sdk_disabled: bool = False
    otel_service_name: str = "batchgate"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings in `environ` (default: the process environment). An empty value counts as
        unset; a value that does not parse raises ValueError naming the variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(spec.name.upper(), "")
            if raw != "":
                values[spec.name] = _parse(spec.name.upper(), spec.type, raw)
        return cls(**values)

    @classmethod
    def documented_defaults(cls) -> dict[str, str]:
        """Each variable's default as README's table words it: the value, `(none)` when unset."""
        defaults = cls()
        words = {}
        for spec in fields(cls):
            value = getattr(defaults, spec.name)
            if "doc" in spec.metadata:
                words[spec.name.upper()] = spec.metadata["doc"]
            elif value is None or value == "":
                words[spec.name.upper()] = "(none)"
            elif isinstance(value, bool):
                words[spec.name.upper()] = str(value).lower()
            elif isinstance(value, float):
                words[spec.name.upper()] = f"{value:g}"
            else:
                words[spec.name.upper()] = str(value)
        return words


DEFAULTS = Settings()


def _parse(name: str, kind: object, raw: str) -> Any:
    try:
        if kind in ("int", "int | None"):
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.lower() == "true"  # as the OpenTelemetry SDK reads its own booleans
    except ValueError:
        raise ValueError(f"{name}: not a valid value: {raw[:64]!r}") from None
    return raw
