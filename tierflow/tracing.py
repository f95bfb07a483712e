"""OpenTelemetry tracing: spans per pipeline stage and per search, off unless configured.

Off by default: with no exporter, OpenTelemetry's API hands out non-recording spans, which cost a
function call. Turn it on with the standard OpenTelemetry variable or tierflow's own setting:

- ``OTEL_TRACES_EXPORTER=otlp`` (with ``OTEL_EXPORTER_OTLP_ENDPOINT``, default ``http://localhost:4318``,
  OTLP over HTTP/protobuf) or ``console`` (spans as JSON on stderr), or ``none``;
- ``TIERFLOW__TRACING__EXPORTER`` (same values), which wins over ``OTEL_TRACES_EXPORTER``;
- ``OTEL_SERVICE_NAME`` (default ``tierflow``) and ``OTEL_RESOURCE_ATTRIBUTES`` as usual.

Pipeline stages run on the Beam runner's workers, so a run's span context crosses to them as a W3C
``traceparent`` string (:func:`current_traceparent`, :func:`stage_span`); each worker configures its
own exporter from the same environment on first use.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tierflow.errors import ConfigError

LOG = logging.getLogger(__name__)
EXPORTERS = ("none", "console", "otlp")
TRACER_NAME = "tierflow"

_lock = threading.Lock()
_configured: str | None = None


def exporter_setting(environ: Mapping[str, str] | None = None) -> str:
    """The exporter asked for: tierflow's setting, else OpenTelemetry's, else ``none``."""
    env = os.environ if environ is None else environ
    value = (env.get("TIERFLOW__TRACING__EXPORTER") or env.get("OTEL_TRACES_EXPORTER") or "none").strip()
    value = value.lower()
    if value not in EXPORTERS:
        raise ConfigError(f"tracing exporter {value!r} is not one of {', '.join(EXPORTERS)}")
    return value


def configure(environ: Mapping[str, str] | None = None) -> str:
    """Install a tracer provider for the configured exporter, once per process; returns the exporter.

    ``none`` installs nothing (OpenTelemetry's no-op provider stays in place).
    """
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        exporter = exporter_setting(environ)
        if exporter != "none":
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                ConsoleSpanExporter,
                SimpleSpanProcessor,
                SpanExporter,
            )

            env = os.environ if environ is None else environ
            resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "tierflow")})
            provider = TracerProvider(resource=resource)
            if exporter == "console":
                provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                span_exporter: SpanExporter = OTLPSpanExporter()
                provider.add_span_processor(BatchSpanProcessor(span_exporter))
            trace.set_tracer_provider(provider)
            LOG.info("tracing: exporting spans (%s)", exporter)
        _configured = exporter
        return exporter


def tracer() -> trace.Tracer:
    configure()
    return trace.get_tracer(TRACER_NAME)


def current_traceparent() -> str:
    """The active span's context as a W3C ``traceparent`` value ("" when nothing is recording)."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, traceparent: str = "") -> Iterator[Span]:
    """A span named ``name`` (child of ``traceparent`` when given, else of the active span).

    An exception leaving the block is recorded on the span, which is marked as an error.
    """
    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent else None
    token = context.attach(parent) if parent is not None else None
    try:
        with tracer().start_as_current_span(name, attributes=dict(attributes or {})) as current:
            try:
                yield current
            except BaseException as err:
                current.set_status(Status(StatusCode.ERROR, f"{type(err).__name__}: {err}"[:200]))
                raise
    finally:
        if token is not None:
            context.detach(token)


def start_span(name: str, traceparent: str = "", attributes: Mapping[str, Any] | None = None) -> Span:
    """A started span the caller ends (``span.end()``): for a Beam bundle, opened in ``start_bundle``
    and ended in ``finish_bundle``."""
    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent else None
    return tracer().start_span(name, context=parent, attributes=dict(attributes or {}))


def reset_for_tests() -> None:
    """Forget the configured exporter (tests install their own provider)."""
    global _configured
    with _lock:
        _configured = None
