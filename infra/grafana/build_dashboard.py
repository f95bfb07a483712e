"""Writes ``infra/grafana/tierflow-dashboard.json``, the Grafana dashboard for tierflow's Prometheus metrics.

The JSON is generated so that its 20-odd panels stay consistent (one datasource variable, one ``job``
filter, the same quantiles everywhere); edit this file and run it, then commit both::

    python infra/grafana/build_dashboard.py            # rewrites the JSON
    python infra/grafana/build_dashboard.py --check    # exit 1 when the JSON is stale (tests do this)

Import the JSON in Grafana (Dashboards > New > Import), or provision it from a ConfigMap with the
sidecar of the Grafana Helm chart. It needs a Prometheus datasource; the ``job`` variable filters by
scrape job.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("tierflow-dashboard.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'job=~"$job"'
RATE = "[$__rate_interval]"


def _selector(*matchers: str) -> str:
    return "{" + ", ".join((JOB, *matchers)) + "}"


def rate(metric: str, *matchers: str) -> str:
    return f"rate({metric}{_selector(*matchers)}{RATE})"


def quantile(q: float, histogram: str, by: str = "") -> str:
    labels = ", ".join(["le", *([by] if by else [])])
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(histogram + '_bucket')}))"


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping rows, and numbers them."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def _next_id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        if self.x:
            self.y += self.row_height
        self.panels.append(
            {
                "id": self._next_id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.x, self.y, self.row_height = 0, self.y + 1, 0

    def panel(
        self,
        title: str,
        description: str,
        targets: list[tuple[str, str]],
        unit: str = "short",
        kind: str = "timeseries",
        width: int = 8,
        height: int = 8,
        options: dict[str, Any] | None = None,
    ) -> None:
        if self.x + width > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        panel: dict[str, Any] = {
            "id": self._next_id(),
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if kind == "timeseries":
            panel["options"] = {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        if options:
            panel["options"] = options
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)


STAT_OPTIONS = {
    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    "colorMode": "value",
    "graphMode": "area",
    "textMode": "auto",
}


def build() -> dict[str, Any]:
    """The dashboard as a dict (Grafana's JSON model, schemaVersion 39)."""
    layout = Layout()
    dedup_rate = rate("tierflow_stage_documents_total", 'stage="dedup"', 'outcome="in"')
    dedup_in = f"sum({dedup_rate})"
    errors_rate = rate("tierflow_search_requests_total", 'status=~"5.."')

    layout.row("Overview")
    overview = [
        (
            "Freshness p99",
            "Source event time to searchable, 99th percentile.",
            quantile(0.99, "tierflow_freshness_seconds"),
            "s",
        ),
        (
            "Kafka consumer lag",
            "Messages not yet consumed, all topics and partitions.",
            f"sum(tierflow_kafka_consumer_lag_messages{_selector()})",
            "short",
        ),
        (
            "Dead letters / s",
            "Records rejected by any stage.",
            f"sum({rate('tierflow_dead_letters_total')})",
            "short",
        ),
        (
            "Search p99",
            "Search latency, 99th percentile, all tier combinations.",
            quantile(0.99, "tierflow_search_seconds"),
            "s",
        ),
        (
            "Search errors",
            "Share of search requests answered 5xx.",
            f"sum({errors_rate}) / sum({rate('tierflow_search_requests_total')})",
            "percentunit",
        ),
        (
            "Vectors",
            "Vectors in every tier (max over the processes that report them).",
            f"sum(max by (tier) (tierflow_tier_vectors{_selector()}))",
            "short",
        ),
    ]
    for title, description, expr, unit in overview:
        layout.panel(title, description, [(expr, "")], unit, "stat", width=4, height=4, options=STAT_OPTIONS)

    layout.row("Pipeline")
    layout.panel(
        "Documents per stage",
        "Documents entering (in) and leaving (out) each stage; the gap is what the stage rejected, "
        "deduplicated or held back.",
        [
            (
                f"sum by (stage, outcome) ({rate('tierflow_stage_documents_total')})",
                "{{stage}} {{outcome}}",
            )
        ],
        "ops",
        width=12,
    )
    layout.panel(
        "Dead letters by reason",
        "Rejected records per stage and reason; every one is in the dead-letter sink with its lineage.",
        [(f"sum by (stage, reason) ({rate('tierflow_dead_letters_total')})", "{{stage}}: {{reason}}")],
        "ops",
        width=12,
    )
    layout.panel(
        "Dedup ratio",
        "Duplicates (exact: same normalised content; near: MinHash LSH) per document entering dedup.",
        [
            (
                f"sum by (kind) ({rate('tierflow_duplicates_total')}) / ignoring(kind) group_left {dedup_in}",
                "{{kind}}",
            )
        ],
        "percentunit",
    )
    layout.panel(
        "Embedding batch latency",
        "Seconds per embedding batch (model forward pass).",
        [
            (quantile(0.5, "tierflow_embedding_batch_seconds"), "p50"),
            (quantile(0.99, "tierflow_embedding_batch_seconds"), "p99"),
        ],
        "s",
    )
    layout.panel(
        "Embedding throughput",
        "Chunks embedded per second.",
        [(f"sum({rate('tierflow_embedded_chunks_total')})", "chunks/s")],
        "ops",
    )
    layout.panel(
        "Commit latency",
        "Seconds per index commit (segments published, manifest fsynced and renamed).",
        [
            (quantile(0.5, "tierflow_commit_seconds"), "p50"),
            (quantile(0.99, "tierflow_commit_seconds"), "p99"),
        ],
        "s",
        width=12,
    )
    layout.panel(
        "Commits",
        "Index commits per second (micro-batches, batch runs, lifecycle runs).",
        [(f"sum({rate('tierflow_commits_total')})", "commits/s")],
        "ops",
        width=12,
    )

    layout.row("Sources")
    layout.panel(
        "Kafka consumer lag",
        "Messages behind the end of each partition.",
        [
            (
                f"sum by (topic, partition) (tierflow_kafka_consumer_lag_messages{_selector()})",
                "{{topic}}/{{partition}}",
            )
        ],
        "short",
    )
    layout.panel(
        "CDC slot lag",
        "WAL bytes the replication slot holds back (confirmed flush LSN to current WAL LSN).",
        [(f"max by (slot) (tierflow_cdc_slot_lag_bytes{_selector()})", "{{slot}}")],
        "bytes",
    )
    layout.panel(
        "Webhook deliveries",
        "Webhook requests per second by HTTP status (202 accepted, 4xx refused, 429 rate-limited).",
        [(f"sum by (status) ({rate('tierflow_webhook_requests_total')})", "{{status}}")],
        "reqps",
    )

    layout.row("Freshness and tiers")
    layout.panel(
        "Freshness",
        "Source event time to searchable.",
        [
            (quantile(0.5, "tierflow_freshness_seconds"), "p50"),
            (quantile(0.99, "tierflow_freshness_seconds"), "p99"),
        ],
        "s",
    )
    layout.panel(
        "Vectors per tier",
        "Vectors in hot (RAM), warm (memory-mapped flash) and cold (object storage).",
        [(f"max by (tier) (tierflow_tier_vectors{_selector()})", "{{tier}}")],
        "short",
    )
    layout.panel(
        "Bytes per tier and medium",
        "Bytes each tier keeps in RAM, on flash and in object storage.",
        [(f"max by (tier, medium) (tierflow_tier_bytes{_selector()})", "{{tier}} / {{medium}}")],
        "bytes",
    )
    layout.panel(
        "Lifecycle moves",
        "Documents moved between tiers per hour by the lifecycle job.",
        [
            (
                f"sum by (from_tier, to_tier) (increase(tierflow_lifecycle_moves_total{_selector()}[1h]))",
                "{{from_tier}} -> {{to_tier}}",
            )
        ],
        "short",
        width=24,
    )

    layout.row("Search")
    layout.panel(
        "Search latency",
        "Seconds per search by the tiers it covered.",
        [
            (quantile(0.5, "tierflow_search_seconds", by="tiers"), "p50 {{tiers}}"),
            (quantile(0.99, "tierflow_search_seconds", by="tiers"), "p99 {{tiers}}"),
        ],
        "s",
        width=12,
    )
    layout.panel(
        "Search requests",
        "Search requests per second by HTTP status.",
        [(f"sum by (status) ({rate('tierflow_search_requests_total')})", "{{status}}")],
        "reqps",
        width=12,
    )
    layout.panel(
        "Shadow searches",
        "Searches repeated on a candidate index version (tierflow serve with shadow reads) by outcome: "
        "compared, dropped (the shadow queue was full) or failed (the candidate's search raised).",
        [(f"sum by (outcome) ({rate('tierflow_shadow_searches_total')})", "{{outcome}}")],
        "ops",
        width=12,
    )
    overlap = "tierflow_shadow_overlap_ratio"
    layout.panel(
        "Shadow top-k overlap",
        "Share of the live top-k documents the candidate version also returned: mean, and the 10th "
        "percentile (the searches where the versions disagree most).",
        [
            (f"sum({rate(overlap + '_sum')}) / sum({rate(overlap + '_count')})", "mean"),
            (quantile(0.1, overlap), "p10"),
        ],
        "percentunit",
        width=12,
    )

    return {
        "uid": "tierflow",
        "title": "tierflow",
        "description": "tierflow retrieval data plane: pipeline, sources, freshness, tiers and search.",
        "tags": ["tierflow"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                {
                    "name": "job",
                    "label": "Job",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "definition": "label_values(tierflow_stage_documents_total, job)",
                    "query": {
                        "query": "label_values(tierflow_stage_documents_total, job)",
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "current": {},
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "refresh": 2,
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "panels": layout.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON differs from this script's")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
