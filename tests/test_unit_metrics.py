"""tierflow.metrics: Beam counters from pipeline stages become Prometheus counters and histograms."""

from __future__ import annotations

import apache_beam as beam
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tierflow import metrics


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class _Stage(beam.DoFn):
    def process(self, value: float):
        metrics.count("stage_documents", "embed", "in")
        metrics.count("dead_letters", "parse", "malformed_json", value=2)
        metrics.observe("embedding_batch_seconds", [value])
        yield value


def test_beam_counters_and_buckets_become_prometheus_metrics() -> None:
    before = _samples()
    pipeline = beam.Pipeline()
    _ = pipeline | beam.Create([0.003, 0.2, 0.2, 7.0, 1e9]) | beam.ParDo(_Stage())
    result = pipeline.run()
    result.wait_until_finish()
    read = metrics.publish(result)
    assert read["stage_documents|embed|in"] == 5
    after = _samples()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("tierflow_stage_documents_total", stage="embed", outcome="in") == 5
    assert delta("tierflow_dead_letters_total", stage="parse", reason="malformed_json") == 10
    assert delta("tierflow_embedding_batch_seconds_count") == 5
    assert delta("tierflow_embedding_batch_seconds_sum") == pytest.approx(0.003 + 0.4 + 7.0 + 1e9)
    assert delta("tierflow_embedding_batch_seconds_bucket", le="0.005") == 1
    assert delta("tierflow_embedding_batch_seconds_bucket", le="0.25") == 3
    assert delta("tierflow_embedding_batch_seconds_bucket", le="10.0") == 4
    assert delta("tierflow_embedding_batch_seconds_bucket", le="+Inf") == 5


def test_outside_a_pipeline_counts_go_to_prometheus_directly() -> None:
    """The driver settles some runs without a pipeline (pipelines.driver): its counts must not vanish."""
    before = _samples()
    metrics.count("commits")
    metrics.count("stage_documents", "validate", "out", value=3)
    metrics.observe("commit_seconds", [0.02, 0.3])
    after = _samples()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("tierflow_commits_total") == 1
    assert delta("tierflow_stage_documents_total", stage="validate", outcome="out") == 3
    assert delta("tierflow_commit_seconds_count") == 2
    assert delta("tierflow_commit_seconds_sum") == pytest.approx(0.32)
    assert delta("tierflow_commit_seconds_bucket", le="0.025") == 1


def test_unknown_metric_or_wrong_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.count("stage_documents", "embed")
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.count("no_such_metric")


def test_textfile_for_node_exporter(tmp_path) -> None:
    metrics.write_textfile(tmp_path / "tierflow.prom")
    text = (tmp_path / "tierflow.prom").read_text()
    assert "# TYPE tierflow_commits_total counter" in text
    assert "# TYPE tierflow_freshness_seconds histogram" in text
