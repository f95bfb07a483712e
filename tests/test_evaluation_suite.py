"""Evaluation suites end to end on the shipped demo suite: reports, determinism, the gate, object-store datasets."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import pytest

from evaluation.suite import DatasetSpec, fetch_dataset, load_suite
from tests.helpers import DEMO, REPO
from tierflow.cli import main
from tierflow.errors import ConfigError

SUITE = REPO / "evaluation" / "suites" / "demo.toml"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("suite")
    out, cache, baseline = root / "out", root / "cache", root / "baseline.json"
    code = main(
        [
            "eval",
            "run",
            str(SUITE),
            "--out",
            str(out),
            "--cache",
            str(cache),
            "--write-baseline",
            str(baseline),
        ]
    )
    assert code == 0  # no gate in the demo suite; every threshold met
    return out, cache, baseline


@pytest.mark.model
def test_suite_writes_every_report_with_provenance_and_operations(first_run: tuple[Path, Path, Path]) -> None:
    out, _, _ = first_run
    for name in ("summary.md", "junit.xml", "suite.json"):
        assert (out / name).stat().st_size > 0
    for config in ("flat", "half-cold", "damaged"):
        for name in ("report.json", "report.md", "report.html"):
            assert (out / "demo" / config / name).exists(), (config, name)
    flat = json.loads((out / "demo" / "flat" / "report.json").read_text())
    provenance = flat["provenance"]
    assert (
        provenance["dataset"]["checksums"] and provenance["model"]["revision"] and provenance["code_version"]
    )
    assert provenance["tiers"] == {"hot": provenance["index"]["vectors"], "warm": 0, "cold": 0}
    ops = flat["operations"]
    assert ops["dedup_rate"] == pytest.approx(2 / 24, abs=1e-6) and ops["dead_letters"] == 3
    assert ops["dead_letter_rate"] == pytest.approx(3 / 27, abs=1e-6)
    assert ops["freshness"]["documents"] == 24 and ops["freshness"]["p50_s"] is not None
    assert ops["cost_per_1k_docs"]["embed_seconds"] > 0 and ops["bytes"]["flash"] > 0

    half = json.loads((out / "demo" / "half-cold" / "report.json").read_text())
    assert half["provenance"]["tiers"]["cold"] > 0 and half["operations"]["bytes"]["object_storage"] > 0
    suite = json.loads((out / "suite.json").read_text())
    assert suite["results"]["demo/half-cold"]["parity"]["against"] == "demo/flat"
    assert abs(suite["results"]["demo/half-cold"]["parity"]["deltas"]["ndcg@10"]) <= 0.01
    assert "demo/half-cold" in (out / "summary.md").read_text()
    html = (out / "demo" / "flat" / "report.html").read_text()
    assert "data:image/png;base64," in html or "<svg" in html

    junit = ET.parse(out / "junit.xml").getroot()
    suites = junit.findall(".//testsuite")
    assert len(suites) == 3 and all(len(s.findall("testcase")) == 1 for s in suites)


@pytest.mark.model
def test_two_runs_of_a_suite_give_identical_numbers(
    first_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    out, cache, _ = first_run
    again = tmp_path / "again"
    assert main(["eval", "run", str(SUITE), "--out", str(again), "--cache", str(cache)]) == 0
    first = json.loads((out / "suite.json").read_text())["results"]
    second = json.loads((again / "suite.json").read_text())["results"]
    assert {k: v["metrics"] for k, v in first.items()} == {k: v["metrics"] for k, v in second.items()}
    for name in first:
        run1 = json.loads((out / name / "report.json").read_text())["run"]
        assert run1 == json.loads((again / name / "report.json").read_text())["run"]


@pytest.mark.model
def test_gate_fails_a_damaged_index_with_a_readable_message(
    first_run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, cache, baseline = first_run
    # The baseline as committed passes against the same suite ...
    assert (
        main(
            [
                "eval",
                "run",
                str(SUITE),
                "--out",
                str(tmp_path / "ok"),
                "--cache",
                str(cache),
                "--baseline",
                str(baseline),
            ]
        )
        == 0
    )
    # ... and a baseline that says the damaged configuration used to be as good as the intact one fails.
    saved = json.loads(baseline.read_text())
    saved["results"]["demo/damaged"] = saved["results"]["demo/flat"]
    worse = tmp_path / "worse-baseline.json"
    worse.write_text(json.dumps(saved))
    capsys.readouterr()
    gated = tmp_path / "gated"
    code = main(
        ["eval", "run", str(SUITE), "--out", str(gated), "--cache", str(cache), "--baseline", str(worse)]
    )
    printed = capsys.readouterr().out
    assert code == 1
    assert "ndcg@10 dropped" in printed and "demo/damaged" in printed
    assert "ndcg@10 dropped" in (gated / "compare.md").read_text()

    # The same verdict from the two reports directly.
    code = main(
        [
            "eval",
            "compare",
            str(out / "demo" / "flat" / "report.json"),
            str(out / "demo" / "damaged" / "report.json"),
            "--max-drop",
            "ndcg@10=0.01",
        ]
    )
    assert code == 1


def test_suite_files_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[datasets]]\nname = "d"\npath = "."\nsplitt = "test"\n')
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) datasets\[0\]\.splitt"):
        load_suite(bad)
    bad.write_text('[[datasets]]\nname = "d"\npath = "."\n[[configs]]\nname = "a"\nderive = "b"\n')
    with pytest.raises(ConfigError, match="derives from 'b', which is not an earlier configuration"):
        load_suite(bad)
    bad.write_text('name = "x"\n')
    with pytest.raises(ConfigError, match="names no"):
        load_suite(bad)
    assert load_suite(REPO / "evaluation" / "suites" / "scifact.toml").gate.max_drop["ndcg@10"] == "0.01"


@pytest.mark.s3
def test_dataset_on_object_storage_is_fetched(s3_server: str, tmp_path: Path) -> None:
    bucket = f"eval-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=bucket)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        client.upload_file(str(DEMO / name), bucket, f"sets/demo/{name}")
    suite = load_suite(SUITE)
    spec = DatasetSpec("demo", f"s3://{bucket}/sets/demo", endpoint_url=s3_server)
    dataset = fetch_dataset(spec, suite, tmp_path)
    assert len(dataset.queries) == 10 and dataset.checksums["qrels/test.tsv"]
    with pytest.raises(ConfigError, match="does not exist|cannot list|not found|NoSuchKey|404"):
        fetch_dataset(DatasetSpec("x", f"s3://{bucket}/missing", endpoint_url=s3_server), suite, tmp_path)


def test_query_log_import_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(
        '{"query": "How do Kafka consumers resume?", "clicked": ["kafka-1", "kafka-2"], "accepted": ["kafka-1"]}\n'
        '{"query": "how do kafka  consumers resume?", "clicked": ["kafka-1"]}\n'
        "not json\n"
    )
    out = tmp_path / "from-traffic"
    assert main(["eval", "import-log", str(log), str(out), "--corpus", str(DEMO / "corpus.jsonl")]) == 0
    summary = json.loads((out / "import.json").read_text())
    assert summary["queries"] == 1 and summary["dropped"]["bad_lines"]["total"] == 1
    qrels = (out / "qrels" / "test.tsv").read_text().splitlines()
    assert sorted(qrels[1:]) == sorted(
        [f"{qrels[1].split()[0]}\tkafka-1\t2", f"{qrels[1].split()[0]}\tkafka-2\t1"]
    )
