"""What operators see: Prometheus metrics, one structured log line per request plus an audit event,
request ids, and OpenTelemetry spans (off unless OTEL_* variables turn them on).

No label or log field ever holds a secret or an unbounded value: labels are route, provider (a
known name or "unknown") and gRPC code names; callers appear as `vk:<id>`, `admin`, `anonymous`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from service.config.settings import Settings

access_log = logging.getLogger("batchgate.access")
audit_log = logging.getLogger("batchgate.audit")

REQUEST_ID_HEADER = "x-request-id"
# A caller's request id is kept (logged, sent upstream, answered with) when it is 1 to
# REQUEST_ID_MAX_LENGTH ASCII letters, digits and REQUEST_ID_PUNCTUATION; any other is replaced. The
# edge's Lua filter applies the same rule to every request: gateway/render.py generates it from these.
REQUEST_ID_MAX_LENGTH = 128
REQUEST_ID_PUNCTUATION = "._:-"
_SAFE_REQUEST_ID = re.compile(f"[A-Za-z0-9{re.escape(REQUEST_ID_PUNCTUATION)}]{{1,{REQUEST_ID_MAX_LENGTH}}}")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "batchgate_requests", "Cancel calls answered, by route, provider and gRPC code", ["route", "provider", "code"]
)
REQUEST_SECONDS = Histogram(
    "batchgate_request_seconds", "Time to answer a cancel call", ["route"], buckets=_LATENCY_BUCKETS
)
IN_FLIGHT = Gauge("batchgate_in_flight_requests", "Cancel calls being handled")
# `operation` tells cancel calls from reads of a batch (follow-up reads and waiting) and from pages
# of a listing (finding batches to cancel).
UPSTREAM_SECONDS = Histogram(
    "batchgate_upstream_seconds",
    "One upstream HTTP attempt, by provider and operation (cancel, read, list)",
    ["provider", "operation"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_ATTEMPTS = Counter(
    "batchgate_upstream_attempts",
    "Upstream HTTP attempts by provider, operation (cancel, read, list) and result (2xx..5xx, error)",
    ["provider", "operation", "result"],
)
UPSTREAM_RETRIES = Counter("batchgate_upstream_retries", "Upstream retries by provider", ["provider"])
KEY_FAILOVERS = Counter("batchgate_key_failovers", "Moves to the next configured key", ["provider"])
ADMISSION_REJECTED = Counter(
    "batchgate_admission_rejected",
    "Cancels refused at once because the provider's admission queue was full (429 overloaded)",
    ["provider"],
)
# Config reloads, named the way Prometheus and Alertmanager name theirs.
CONFIG_RELOADS = Counter("batchgate_config_reloads", "Config reload attempts by result (success, failure)", ["result"])
CONFIG_LAST_RELOAD_SUCCESSFUL = Gauge(
    "batchgate_config_last_reload_successful", "1 if the last config reload attempt succeeded, else 0"
)
CONFIG_LAST_RELOAD_SUCCESS_SECONDS = Gauge(
    "batchgate_config_last_reload_success_timestamp_seconds", "When the running config was loaded (unix time)"
)
CONFIG_INFO = Gauge("batchgate_config_info", "The running config's version (always 1)", ["version"])
# Long-running CancelMatching operations (service.usecases.operations).
OPERATIONS_STARTED = Counter("batchgate_operations_started", "CancelMatching operations started")
OPERATIONS_FINISHED = Counter(
    "batchgate_operations_finished",
    "Operations finished, by result (ok, or the error's gRPC code name: failed_precondition, cancelled, ...)",
    ["result"],
)
OPERATION_BATCHES = Counter(
    "batchgate_operation_batches",
    "Batches of operations settled, by outcome (matched, cancelled, already_ended, failed, skipped)",
    ["outcome"],
)
OPERATIONS_RUNNING = Gauge("batchgate_operations_running", "Operations this worker is running now")
# Every result and outcome starts at 0, so alerts and rate() see the series before the first one.
for _result in ("ok", "failed_precondition", "cancelled", "unauthenticated", "error"):
    OPERATIONS_FINISHED.labels(_result)
for _outcome in ("matched", "cancelled", "already_ended", "failed", "skipped"):
    OPERATION_BATCHES.labels(_outcome)
operations_log = logging.getLogger("batchgate.operations")
for _result in ("success", "failure"):
    CONFIG_RELOADS.labels(_result)


# The provider names a label may hold. Injected by the layer that knows the providers
# (service.usecases.cancel, from the provider catalog) rather than imported: the HTTP executor imports this module,
# and importing the catalog here would pull every adapter (and botocore) under it, in a cycle.
_provider_labels: frozenset[str] = frozenset()


def use_provider_labels(names: Iterable[str]) -> None:
    """Sets the provider names that appear as themselves in labels; any other name is `unknown`."""
    global _provider_labels
    _provider_labels = frozenset(names)


def provider_label(provider: str) -> str:
    return provider if provider in _provider_labels else "unknown"


def provider_series(provider: str) -> None:
    """Creates a configured provider's counters at 0, so that a rate() over them (an alert, a
    dashboard panel) sees the provider before its first retry, key failover or refused call."""
    label = provider_label(provider)
    for metric in (UPSTREAM_RETRIES, KEY_FAILOVERS, ADMISSION_REJECTED):
        _child(metric, label)


def count_shed(provider: str) -> None:
    """One call refused by the provider's admission queue (service.infra.resilience.Admission)."""
    _child(ADMISSION_REJECTED, provider_label(provider)).inc()


@functools.cache
def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once per label set: every label here comes from a bounded
    set (routes, provider names, gRPC codes), and `labels()` costs a few microseconds per call."""
    return metric.labels(*labels)


@dataclass(slots=True)
class CallRecord:
    """What one request did upstream, filled in as it goes; becomes its log line and metrics."""

    request_id: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    attempts: int = 0
    upstream_status: int | None = None
    key_failovers: int = 0
    # Of the attempts, those that read (a batch, or a page of a listing); the rest are cancel calls.
    reads: int = 0

    def attempt(self, provider: str, status: int | None, seconds: float, operation: str = "cancel") -> None:
        """Records one upstream HTTP attempt (status None: no answer)."""
        self.attempts += 1
        if operation != "cancel":
            self.reads += 1
        elif self.attempts - self.reads > 1:
            _child(UPSTREAM_RETRIES, provider).inc()
        self.upstream_status = status
        _child(UPSTREAM_SECONDS, provider, operation).observe(seconds)
        _child(UPSTREAM_ATTEMPTS, provider, operation, f"{status // 100}xx" if status else "error").inc()


def request_id(headers: dict[str, str]) -> tuple[str, bool]:
    """The caller's (or Envoy's) request id when it is safe to log and forward, else a new one;
    the flag says whether it was generated here."""
    given = headers.get(REQUEST_ID_HEADER, "")
    if _SAFE_REQUEST_ID.fullmatch(given):
        return given, False
    return uuid.uuid4().hex, True


@dataclass(frozen=True, slots=True)
class Subject:
    """What a cancel was about: its provider and batch, a bulk item's index, and the name of the
    long-running operation it was part of."""

    provider: str
    batch_id: str
    index: int | None = None
    operation: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call, or one bulk item, ended: the gRPC code name and HTTP status it was answered with,
    and the error message or warning its log line or audit event carries."""

    code: str
    http_status: int
    error: str | None = None
    warning: str | None = None


def record_request(record: CallRecord, caller: str, subject: Subject, outcome: Outcome) -> None:
    """Metrics, the access log line and the audit event for one finished call."""
    seconds = time.perf_counter() - record.started
    label = provider_label(subject.provider)
    _child(REQUESTS, record.route, label, outcome.code).inc()
    _child(REQUEST_SECONDS, record.route).observe(seconds)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "request",
            extra={
                "fields": {
                    "request_id": record.request_id,
                    "route": record.route,
                    "provider": label,
                    "batch_id": subject.batch_id[:256],
                    "caller": caller,
                    "outcome": outcome.code,
                    "status": outcome.http_status,
                    "upstream_status": record.upstream_status,
                    "attempts": record.attempts,
                    "reads": record.reads,
                    "key_failovers": record.key_failovers,
                    "latency_ms": round(seconds * 1000, 2),
                    **({"error": outcome.error} if outcome.error else {}),
                }
            },
        )
    _audit(record, caller, label, subject, Outcome(outcome.code, outcome.http_status))


def _audit(record: CallRecord, caller: str, provider: str, subject: Subject, outcome: Outcome) -> None:
    """The audit event of one cancel: a single call's, or one bulk item's (with its index).
    `provider` is the subject's provider as a label (an unknown name reads `unknown`)."""
    if audit_log.isEnabledFor(logging.INFO):
        audit_log.info(
            "audit",
            extra={
                "fields": {
                    "event": "audit",
                    "request_id": record.request_id,
                    **({"index": subject.index} if subject.index is not None else {}),
                    **({"operation": subject.operation} if subject.operation is not None else {}),
                    "who": caller,
                    "action": "batch.cancel",
                    "provider": provider,
                    "batch_id": subject.batch_id[:256],
                    "result": "ok" if outcome.code == "OK" else outcome.code,
                    "status": outcome.http_status,
                    **({"warning": outcome.warning} if outcome.warning else {}),
                }
            },
        )


def record_item(record: CallRecord, caller: str, subject: Subject, outcome: Outcome) -> None:
    """Metrics and the audit event for one item of a bulk cancel, once it had its final event: the
    call's request id plus the item's index identify it."""
    label = provider_label(subject.provider)
    _child(REQUESTS, record.route, label, outcome.code).inc()
    _audit(record, caller, label, subject, outcome)


def record_operation_batch(record: CallRecord, caller: str, subject: Subject, settled: str, outcome: Outcome) -> None:
    """The metric and the audit event of one batch of an operation once it is settled (`settled`:
    its outcome, cancelled, failed...): the CancelMatching call's request id and the operation's
    name (`subject.operation`) identify it."""
    _child(OPERATION_BATCHES, settled).inc()
    _audit(record, caller, provider_label(subject.provider), subject, outcome)


def record_operation(name: str, caller: str, state: str, counts: dict[str, int], **fields: Any) -> None:
    """One log line per state change of an operation (`batchgate.operations`): no secrets, the
    caller as `vk:<id>` or `admin`."""
    if operations_log.isEnabledFor(logging.INFO):
        details = {k: v for k, v in fields.items() if v is not None}
        operations_log.info(
            "operation " + state,
            extra={"fields": {"operation": name, "caller": caller, "state": state, **counts, **details}},
        )


def record_call(record: CallRecord, rpc: str, caller: str, outcome: Outcome, **fields: Any) -> None:
    """The access log line of a call that is not a single cancel (CancelMany, CancelMatching and the
    google.longrunning.Operations calls): its RPC, caller, outcome and `fields` (those not None)."""
    seconds = time.perf_counter() - record.started
    _child(REQUEST_SECONDS, record.route).observe(seconds)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "request",
            extra={
                "fields": {
                    "request_id": record.request_id,
                    "route": record.route,
                    "rpc": rpc,
                    "caller": caller,
                    "outcome": outcome.code,
                    "status": outcome.http_status,
                    **{k: v for k, v in fields.items() if v is not None},
                    "latency_ms": round(seconds * 1000, 2),
                    **({"error": outcome.error} if outcome.error else {}),
                }
            },
        )


def record_bulk(record: CallRecord, caller: str, items: int, item_outcomes: dict[str, int], outcome: Outcome) -> None:
    """The one access log line of a bulk cancel: its `items` (as asked), their counts by final
    outcome (gRPC code names), and what it did upstream (cancel attempts and reads)."""
    record_call(
        record,
        "CancelMany",
        caller,
        outcome,
        items=items,
        item_outcomes=item_outcomes,
        attempts=record.attempts,
        reads=record.reads,
        key_failovers=record.key_failovers,
    )


class CircuitCollector(Collector):
    """Exposes each provider's circuit state at scrape time (0 closed, 1 half-open, 2 open)."""

    _VALUES = {"closed": 0, "half_open": 1, "open": 2}

    def __init__(self, states: Callable[[], dict[str, str]]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "batchgate_circuit_state",
            "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
            labels=["provider"],
        )
        for provider, state in self._states().items():
            family.add_metric([provider], self._VALUES.get(state, 0))
        yield family


def start_metrics(host: str, port: int, circuit_states: Callable[[], dict[str, str]]) -> None:
    """Serves /metrics on `host`:`port` (METRICS_HOST, METRICS_PORT) with the circuit gauge."""
    REGISTRY.register(CircuitCollector(circuit_states))
    start_http_server(port, addr=host)


# Masks the running config's secrets in log lines (service.infra.redaction; set on each load by
# service.runtime.live): a last guard, since provider text is masked where it enters. The per-call
# info lines (access, audit) are built from fields that are masked already (an error message comes
# from a masked answer); warnings, errors and tracebacks carry text from anywhere: they all pass.
_log_redaction: Callable[[str], str] | None = None


def redact_logs(redact: Callable[[str], str] | None) -> None:
    """Every warning, error and traceback line from now on passes through `redact`."""
    global _log_redaction
    _log_redaction = redact


def _redacted(record: logging.LogRecord, line: str) -> str:
    if _log_redaction is None or (record.levelno < logging.WARNING and not record.exc_info):
        return line
    return _log_redaction(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's `fields`. On the
    request path twice per call, so it is kept cheap (orjson, the timestamp prefix cached per second)."""

    _second = -1
    _prefix = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _redacted(record, orjson.dumps(line, default=str).decode())


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            # Values JSON-quoted: a batch id with a newline must not forge a log line.
            text += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        return _redacted(record, text)


def configure_logging(settings: Settings) -> None:
    """LOG_LEVEL and LOG_FORMAT (json | text) for every logger."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format.lower() == "text":
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    # Records don't need the caller's source line, thread or process (see the logging HOWTO's
    # "Optimization"): skipping them halves the cost of a log call on the request path.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


# --- tracing -------------------------------------------------------------------------------------
# Spans for each RPC and each upstream attempt. Without configuration the API's tracer is a no-op
# (a few microseconds per call); OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_ENDPOINT turns the SDK
# on, configured by the standard OTEL_* variables (service name, endpoint, headers, sampler).

tracer = otel_trace.get_tracer("batchgate")
_tracing = False


def tracing_enabled() -> bool:
    return _tracing


def configure_tracing(settings: Settings, exporter: Any = None) -> bool:
    """Installs the SDK when the settings ask for it (or an exporter is given, for tests)."""
    global _tracing
    wanted = settings.otel_traces_exporter.lower()
    if exporter is None and (wanted in ("", "none") and not settings.otel_exporter_otlp_endpoint):
        return False
    if settings.otel_sdk_disabled:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif wanted == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    otel_trace.set_tracer_provider(provider)
    _tracing = True
    return True


def server_span(rpc: str, headers: dict[str, str], request_id: str) -> otel_trace.Span:
    """The span of one RPC, continuing the caller's traceparent; a shared no-op span when tracing
    is off (nothing is allocated per call)."""
    if not _tracing:
        return otel_trace.INVALID_SPAN
    return tracer.start_span(
        f"batchgate.v1.BatchService/{rpc}",
        context=propagate.extract(headers),
        kind=otel_trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "batchgate.request_id": request_id},
    )


def activate(span: otel_trace.Span) -> Any:
    """Makes `span` current for the enclosed code (a no-op when tracing is off)."""
    return otel_trace.use_span(span, end_on_exit=False) if _tracing else contextlib.nullcontext()


def client_span(provider: str, method: str, attempt: int) -> Any:
    """A context manager for one upstream attempt (a no-op when tracing is off)."""
    if not _tracing:
        return contextlib.nullcontext(otel_trace.INVALID_SPAN)
    return tracer.start_as_current_span(
        f"{method} {provider}",
        kind=otel_trace.SpanKind.CLIENT,
        attributes={"http.request.method": method, "batchgate.provider": provider, "batchgate.attempt": attempt},
    )


def inject_context(headers: dict[str, str]) -> None:
    """Passes the current trace context upstream, when tracing is on."""
    if _tracing:
        propagate.inject(headers)
