"""Validation: a Great Expectations suite over each batch of documents; failures become dead letters.

The suite checks what a parser cannot: ids within length, a known op, a non-negative version, non-empty
text within the size limit for upserts, titles within their limit. Each failing row is dead-lettered
with the names of the expectations it broke; the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tierflow.config import ValidationConfig
from tierflow.deadletter import DeadLetter
from tierflow.records import OPS, DocumentEvent

SUITE_NAME = "tierflow_documents"
SUITE_VERSION = "1"
_BUILT: dict[ValidationConfig, tuple[Any, Any, list[tuple[str, str, Any]]]] = {}  # per process


def _expectations(config: ValidationConfig) -> list[tuple[str, str, Any]]:
    """(reason code, description, GX expectation) for each rule."""
    import great_expectations as gx

    upserts: dict[str, Any] = {"row_condition": 'op=="upsert"', "condition_parser": "pandas"}
    return [
        (
            "bad_id",
            f"doc_id must be 1..{config.max_id_chars} characters",
            gx.expectations.ExpectColumnValueLengthsToBeBetween(
                column="doc_id", min_value=1, max_value=config.max_id_chars
            ),
        ),
        (
            "bad_op",
            f"op must be one of {OPS}",
            gx.expectations.ExpectColumnValuesToBeInSet(column="op", value_set=list(OPS)),
        ),
        (
            "bad_version",
            "version must be >= 0",
            gx.expectations.ExpectColumnValuesToBeBetween(column="version", min_value=0),
        ),
        (
            "empty_text",
            "an upsert needs non-blank text",
            gx.expectations.ExpectColumnValuesToBeBetween(column="text_chars", min_value=1, **upserts),
        ),
        (
            "too_large",
            f"text must be at most {config.max_text_chars} characters",
            gx.expectations.ExpectColumnValuesToBeBetween(
                column="text_chars", max_value=config.max_text_chars
            ),
        ),
        (
            "too_large",
            f"title must be at most {config.max_title_chars} characters",
            gx.expectations.ExpectColumnValuesToBeBetween(
                column="title_chars", max_value=config.max_title_chars
            ),
        ),
    ]


class DocumentValidator:
    """Runs the document suite with Great Expectations on batches of :class:`DocumentEvent`.

    Example:
        >>> validator = DocumentValidator(ValidationConfig(max_text_chars=100_000))
        >>> valid, rejected = validator.validate(events)
    """

    def __init__(self, config: ValidationConfig) -> None:
        self.config = config
        self._batch_definition: Any = None
        self._suite: Any = None
        self._rules: list[tuple[str, str, Any]] = []

    @property
    def suite_id(self) -> str:
        return f"{SUITE_NAME}@{SUITE_VERSION}"

    def warm_up(self) -> None:
        """Build the GX context and suite, once per process and configuration (a pipeline creates new
        DoFns, and so new validators, for every run; a stream runs one pipeline per micro-batch)."""
        if self._suite is None:
            if self.config not in _BUILT:
                _BUILT[self.config] = self._build()
            self._batch_definition, self._suite, self._rules = _BUILT[self.config]

    def _build(self) -> tuple[Any, Any, list[tuple[str, str, Any]]]:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        for name in ("great_expectations", "great_expectations.data_context.types.base"):
            logging.getLogger(name).setLevel(logging.WARNING)
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = context.data_sources.add_pandas("tierflow")
        batch_definition = source.add_dataframe_asset("documents").add_batch_definition_whole_dataframe(
            "batch"
        )
        rules = _expectations(self.config)
        suite = gx.ExpectationSuite(name=SUITE_NAME)
        for _, _, expectation in rules:
            suite.add_expectation(expectation)
        return batch_definition, context.suites.add(suite), rules

    def validate(self, events: list[DocumentEvent]) -> tuple[list[DocumentEvent], list[DeadLetter]]:
        """Split ``events`` into those that pass the suite and dead letters for those that do not."""
        if not events:
            return [], []
        import pandas as pd

        self.warm_up()
        frame = pd.DataFrame(
            {
                "doc_id": [e.doc_id for e in events],
                "op": [e.op for e in events],
                "version": [e.version for e in events],
                "text_chars": [len(e.text.strip()) if e.op == "upsert" else len(e.text) for e in events],
                "title_chars": [len(e.title) for e in events],
            }
        )
        batch = self._batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(self._suite, result_format={"result_format": "COMPLETE"})
        failures: dict[int, list[tuple[str, str]]] = {}
        for rule, outcome in zip(self._rules, result.results, strict=True):
            for row in outcome.result.get("unexpected_index_list") or []:
                failures.setdefault(int(row), []).append((rule[0], rule[1]))
        valid = [e for i, e in enumerate(events) if i not in failures]
        rejected = [
            DeadLetter(
                reason=problems[0][0],
                detail=f"failed {self.suite_id}: " + "; ".join(desc for _, desc in problems),
                stage="validate",
                source=events[i].source,
                raw=_raw(events[i]),
                doc_id=events[i].doc_id,
            )
            for i, problems in sorted(failures.items())
        ]
        return valid, rejected


def _raw(event: DocumentEvent) -> str:
    import json

    return json.dumps(
        {
            "doc_id": event.doc_id,
            "op": event.op,
            "title": event.title,
            "text": event.text,
            "metadata": event.metadata,
            "version": event.version,
        },
        ensure_ascii=False,
    )
