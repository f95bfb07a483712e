"""Tests for evaluation.junit (JUnit XML), evaluation.html (the HTML report) and evaluation.screenshot."""

from __future__ import annotations

import json
import shutil
import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from evaluation import evaluate, load_beir
from evaluation.beir import BeirDataset
from evaluation.html import write_html
from evaluation.junit import write_junit
from tierflow.errors import ConfigError

CORPUS = [
    {"_id": "d1", "title": "Hot tier", "text": "FAISS serves the hot tier from memory. " * 20},
    {"_id": "d2", "title": "Cold tier", "text": "Lance files on S3 hold the cold tier."},
    {
        "_id": "d3",
        "title": "Connectors <& friends>",
        "text": "Kafka, Postgres CDC and webhooks feed documents.",
    },
    {"_id": "d4", "title": "Chunking", "text": "Documents are split into overlapping chunks."},
    {"_id": "d5", "title": "Lifecycle", "text": "Policies move vectors from the hot to the cold tier."},
    {"_id": "d6", "title": "Evaluation", "text": "BEIR datasets score retrieval with trec_eval metrics."},
    {"_id": "d7", "title": "Never found", "text": "A relevant document the run misses."},
    {"_id": "d8", "title": "Unneeded document", "text": "Neither retrieved nor relevant."},
]
QUERIES = {
    "q1": "where does the <hot> & fast tier live?",
    "q2": "which connectors exist?",
    "q3": "how do vectors move between tiers?",
    "q4": "how is retrieval evaluated?",
}
QRELS = {"q1": {"d1": 2, "d2": 1}, "q2": {"d3": 1, "d4": 0}, "q3": {"d5": 1, "d7": 1}, "q4": {"d6": 1}}
RUN = {
    "q1": {"d1": 0.9, "d3": 0.8, "d2": 0.5},
    "q2": {"d4": 0.9, "d3": 0.7, "d1": 0.2},
    "q3": {"d2": 0.9, "d1": 0.8, "d5": 0.1},
}


def write_dataset(root: Path) -> BeirDataset:
    """A tiny BEIR dataset (corpus.jsonl, queries.jsonl, qrels/test.tsv) under ``root``, loaded."""
    (root / "qrels").mkdir(parents=True)
    lines = [json.dumps(doc) for doc in CORPUS]
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = [json.dumps({"_id": qid, "text": text}) for qid, text in QUERIES.items()]
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    judgments = [f"{qid}\t{doc}\t{grade}" for qid, docs in QRELS.items() for doc, grade in docs.items()]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(judgments) + "\n")
    return load_beir(root)


def make_result(dataset: BeirDataset, **extra: Any) -> dict[str, Any]:
    scores = evaluate(RUN, dataset.qrels, ks=(1, 3, 5, 10, 100))
    return {
        "title": "toy <test> & co",
        "provenance": {
            "dataset": {
                "path": str(dataset.path),
                "queries": len(dataset.queries),
                "checksums": dataset.checksums,
            },
            "model": {"name": "all-MiniLM-L6-v2", "revision": "c9745ed"},
            "index": {"types": ["flat"], "vectors": 8},
            "code_version": "da060ac",
            "search_seconds": 0.012,
        },
        "metrics": {"mean": scores.mean, "per_query": scores.per_query},
        "run": RUN,
        **extra,
    }


@pytest.fixture
def dataset(tmp_path: Path) -> BeirDataset:
    return write_dataset(tmp_path / "toy")


# --- JUnit ----------------------------------------------------------------------------------------------


def suites(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return {suite.get("name", ""): suite for suite in root.findall("testsuite")}


def test_junit_all_pass_with_thresholds_for_every_result(tmp_path: Path, dataset: BeirDataset) -> None:
    result = make_result(dataset)
    other = {**make_result(dataset), "name": "second index"}
    path = write_junit(tmp_path / "out" / "junit.xml", [result, other], {"ndcg@10": 0.1, "map": 0.0})
    root = ET.parse(path).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "0", "0")
    by_name = suites(path)
    assert sorted(by_name) == ["second index", "toy <test> & co"]
    suite = by_name["toy <test> & co"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == ["map >= 0", "ndcg@10 >= 0.1"]
    assert {case.get("classname") for case in cases} == {"toy <test> & co"}
    assert all(case.find("failure") is None and case.find("error") is None for case in cases)
    properties = {prop.get("name"): prop.get("value") for prop in suite.iter("property")}
    assert properties["dataset.checksums.qrels/test.tsv"] == dataset.checksums["qrels/test.tsv"]
    assert properties["model.name"] == "all-MiniLM-L6-v2"
    assert properties["code_version"] == "da060ac"
    assert properties["queries_scored"] == "4"
    assert "search_seconds" not in properties


def test_junit_counts_failures_and_missing_metrics(tmp_path: Path, dataset: BeirDataset) -> None:
    result = make_result(dataset)
    ndcg = result["metrics"]["mean"]["ndcg@10"]
    thresholds = {
        "toy <test> & co": {"ndcg@10": 0.99, "recall@100": 0.1, "ndcg@20": 0.5},
        "other": {"map": 0.0},
    }
    path = write_junit(tmp_path / "junit.xml", [result, {**result, "name": "other"}], thresholds)
    root = ET.parse(path).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    suite = suites(path)["toy <test> & co"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert sorted(cases) == ["ndcg@10 >= 0.99", "ndcg@20 >= 0.5", "recall@100 >= 0.1"]
    failure = cases["ndcg@10 >= 0.99"].find("failure")
    assert failure is not None
    assert (
        failure.get("message") == f"ndcg@10 = {ndcg:.4f} is below the threshold 0.9900 (by {0.99 - ndcg:.4f})"
    )
    error = cases["ndcg@20 >= 0.5"].find("error")
    assert error is not None
    assert "'ndcg@20' was not computed" in (error.get("message") or "")
    assert "ndcg@10" in (error.get("message") or "")
    assert cases["recall@100 >= 0.1"].find("failure") is None
    assert suites(path)["other"].get("failures") == "0"


def test_junit_merges_result_thresholds_and_rejects_bad_ones(tmp_path: Path, dataset: BeirDataset) -> None:
    result = make_result(dataset, thresholds={"map": 0.99, "p@1": 0.0})
    path = write_junit(tmp_path / "junit.xml", [result], {"map": 0.0})
    suite = suites(path)["toy <test> & co"]
    assert (suite.get("tests"), suite.get("failures")) == ("2", "0")  # the argument's map >= 0 wins
    path = write_junit(tmp_path / "own.xml", [result])
    assert suites(path)["toy <test> & co"].get("failures") == "1"
    with pytest.raises(ValueError, match="not a mix"):
        write_junit(tmp_path / "x.xml", [result], {"map": 0.1, "toy <test> & co": {"map": 0.1}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="no result has"):
        write_junit(tmp_path / "x.xml", [result], {"nope": {"map": 0.1}})
    with pytest.raises(ValueError, match="must be a number"):
        write_junit(tmp_path / "x.xml", [result], {"map": "high"})  # type: ignore[dict-item]


# --- HTML -----------------------------------------------------------------------------------------------


def test_html_has_tables_plots_and_worst_queries(tmp_path: Path, dataset: BeirDataset) -> None:
    result = make_result(dataset, reference={"ndcg@10": 0.5}, thresholds={"map": 0.9})
    path = write_html(tmp_path / "report" / "eval.html", result, dataset, worst=3)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<h1>Evaluation report: toy &lt;test&gt; &amp; co</h1>" in page
    assert dataset.checksums["corpus.jsonl"] in page
    assert "dataset.checksums.qrels/test.tsv" in page
    assert "Metrics (mean over 4 queries)" in page
    assert "Reference scores" in page and "Thresholds (minimums)" in page
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page  # self-contained
    # Worst three by ndcg@10: q4 (nothing retrieved), q3 (d5 at rank 3, d7 missed), q2 (d3 at rank 2).
    assert page.index("Query <code>q4</code>") < page.index("Query <code>q3</code>")
    assert page.index("Query <code>q3</code>") < page.index("Query <code>q2</code>")
    assert "Query <code>q1</code>" not in page
    assert "which connectors exist?" in page
    assert "nothing retrieved for this query" in page
    assert '<span class="badge rel">relevant, grade 1</span>' in page
    assert "judged not relevant" in page  # d4, graded 0 for q2
    assert page.count('<span class="badge miss">not retrieved</span>') == 2  # q4's d6, q3's d7
    assert "Connectors &lt;&amp; friends&gt;" in page
    assert "Unneeded document" not in page and "Hot tier" in page  # d1 retrieved by q2 and q3
    assert write_html(tmp_path / "again.html", result, dataset, worst=3).read_bytes() == path.read_bytes()


def test_html_shows_every_query_when_worst_covers_all(tmp_path: Path, dataset: BeirDataset) -> None:
    page = write_html(tmp_path / "eval.html", make_result(dataset), dataset).read_text(encoding="utf-8")
    assert page.count('<section class="query">') == 4
    assert "where does the &lt;hot&gt; &amp; fast tier live?" in page
    assert '<span class="badge rel">relevant, grade 2</span>' in page  # q1's d1, at rank 1
    assert "\N{HORIZONTAL ELLIPSIS}" in page  # d1's long text is cut to a snippet


def test_html_without_run_or_dataset(tmp_path: Path, dataset: BeirDataset) -> None:
    result = make_result(dataset)
    ids_only = write_html(tmp_path / "ids.html", result).read_text(encoding="utf-8")
    assert "No dataset was given" in ids_only
    assert "<code>d4</code>" in ids_only and "Hot tier" not in ids_only and "relevant, grade" not in ids_only
    del result["run"]
    no_run = write_html(tmp_path / "norun.html", result, dataset).read_text(encoding="utf-8")
    assert "The result has no run" in no_run
    assert '<section class="query">' not in no_run
    assert no_run.count("data:image/png;base64,") == 2


# --- screenshot -----------------------------------------------------------------------------------------


def test_screenshot_without_chromium_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluation import screenshot as module

    monkeypatch.setattr(module.shutil, "which", lambda name: None)
    html = tmp_path / "page.html"
    html.write_text("<p>hi</p>", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"install Debian's chromium \(infra/install-chromium.sh\)"):
        module.screenshot(html, tmp_path / "page.png")


@pytest.fixture
def chromium() -> str:
    """The Chromium binary; skips when it is missing, fails instead under CI (``CI`` set)."""
    from evaluation.screenshot import INSTALL_HINT, find_chromium
    from tests.postgres_server import skip_or_fail

    binary = find_chromium()
    if binary is None:
        skip_or_fail(f"no chromium or chromium-browser on PATH: {INSTALL_HINT}")
    assert binary is not None
    return binary


@pytest.mark.chromium
@pytest.mark.timeout(180)
def test_screenshot_renders_the_html_report(tmp_path: Path, dataset: BeirDataset, chromium: str) -> None:
    from PIL import Image

    from evaluation.screenshot import screenshot

    html = write_html(tmp_path / "eval.html", make_result(dataset, reference={"ndcg@10": 0.5}), dataset)
    png = screenshot(html, tmp_path / "shots" / "eval.png", width=1000, height=1400)
    assert png == (tmp_path / "shots" / "eval.png").resolve()
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    assert struct.unpack(">II", head[16:24]) == (1000, 1400)
    with Image.open(png) as image:
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1_000_000)
    assert colours is None or len(colours) > 10  # text, tables and plots: many colours, not a blank page
    assert shutil.which(Path(chromium).name) is not None


def test_html_gives_the_rank_of_relevant_documents_below_the_top(
    tmp_path: Path, dataset: BeirDataset
) -> None:
    run = {**RUN, "q1": {**{f"x{i:02d}": 1.0 - i / 100 for i in range(11)}, "d2": 0.5, "d1": 0.4}}
    scores = evaluate(run, dataset.qrels, ks=(10,))
    result = {"metrics": {"mean": scores.mean, "per_query": scores.per_query}, "run": run}
    page = write_html(tmp_path / "eval.html", result, dataset, worst=4).read_text(encoding="utf-8")
    card = page[page.index("Query <code>q1</code>") :]
    card = card[: card.index("</section>")]
    assert "Retrieved (top 10 of 13)" in card
    assert "badge rel" not in card  # neither relevant document made the top 10
    assert '<tr class="missing"><td class="num">2</td><td class="num">13</td>' in card  # d1, grade 2
    assert '<tr class="missing"><td class="num">1</td><td class="num">12</td>' in card  # d2, grade 1
    assert "(not in the corpus)" in card  # the x.. documents
