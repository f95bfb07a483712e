"""Pipeline stages as OpenTelemetry spans: one span per Beam bundle, a child of the run's span.

A bundle is the unit a runner hands a worker (a batch of records, a write shard, the commit), so a
trace shows where a run spent its time without a span per record. The run's span context reaches the
workers as a W3C ``traceparent`` string set when the graph is built (:func:`traced`).
"""

from __future__ import annotations

from typing import Any, TypeVar

import apache_beam as beam

from tierflow import tracing

Fn = TypeVar("Fn", bound="TracedDoFn")


class TracedDoFn(beam.DoFn):
    """A DoFn whose bundles are spans named ``span_name``; subclasses call :meth:`note` to count."""

    span_name = "tierflow.stage"
    traceparent = ""

    def start_bundle(self) -> None:
        self._span: Any = tracing.start_span(self.span_name, self.traceparent)
        self._noted: dict[str, int] = {}

    def note(self, name: str, value: int = 1) -> None:
        """Add ``value`` to the bundle span's attribute ``tierflow.<name>``."""
        self._noted[name] = self._noted.get(name, 0) + value

    def finish_bundle(self) -> None:
        for name, value in self._noted.items():
            self._span.set_attribute(f"tierflow.{name}", value)
        self._span.end()


def traced(fn: Fn, traceparent: str) -> Fn:
    """``fn`` with its bundles parented on ``traceparent`` (the run's span)."""
    fn.traceparent = traceparent
    return fn
