"""Write an evaluation result as one self-contained HTML page: tables, plots and the worst queries.

The page holds the provenance (flattened like the Markdown report), the mean metrics by cut-off, the
comparison with ``reference`` scores and ``thresholds`` (minimums) when the result has them, two plots
(each metric family over its cut-offs; the per-query distribution of nDCG@10) and the ``worst`` queries by
that metric with their retrieved and relevant documents. Plots are PNGs rendered with matplotlib's Agg
backend and inlined as base64 ``data:`` URIs: the file needs nothing else to display, and the same input
gives the same bytes (no timestamps, no random ids).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from evaluation.beir import BeirDataset
from evaluation.metrics import trec_order
from evaluation.report import flatten, metric_grid

TOP_DOCS = 10  # retrieved documents shown per worst query
SNIPPET_CHARS = 280
_FAMILY_LABELS = {"ndcg": "nDCG", "recall": "Recall", "p": "P", "mrr": "MRR", "map": "MAP"}
_COLOURS = {"ndcg": "#1f77b4", "recall": "#2ca02c", "p": "#ff7f0e", "mrr": "#9467bd", "map": "#d62728"}

_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1d2330;
  background: #f5f6f8; margin: 0; line-height: 1.45; font-size: 15px; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; min-height: 100vh;
  box-shadow: 0 0 12px rgba(0, 0, 0, 0.06); }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e3e6eb; }
h3 { font-size: 16px; margin: 18px 0 6px; }
nav { font-size: 14px; color: #5b6475; margin-bottom: 8px; }
nav a { color: #2563eb; text-decoration: none; margin-right: 14px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 14px; }
th, td { border: 1px solid #dde1e7; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.key { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; white-space: nowrap; }
td.value { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px;
  word-break: break-all; max-width: 760px; }
table.provenance { width: 100%; }
.ok { color: #15803d; font-weight: 600; }
.bad { color: #b91c1c; font-weight: 600; }
.muted { color: #6b7280; }
.note { color: #4b5563; font-style: italic; }
figure { margin: 12px 0 20px; }
figure img { width: 100%; max-width: 880px; display: block; border: 1px solid #e3e6eb; }
figcaption { font-size: 13px; color: #5b6475; margin-top: 4px; }
section.query { border: 1px solid #dde1e7; border-radius: 6px; padding: 4px 16px 10px; margin: 16px 0;
  background: #fdfdfe; }
section.query h3 { display: flex; justify-content: space-between; gap: 12px; }
blockquote { margin: 4px 0 10px; padding: 6px 12px; border-left: 4px solid #93c5fd; background: #f1f6ff; }
table.docs { width: 100%; }
table.docs td.num, table.docs th.num { width: 1%; }
tr.relevant td { background: #ecfdf3 !important; }
tr.missing td { background: #fef2f2 !important; }
.badge { display: inline-block; font-size: 12px; padding: 0 6px; border-radius: 9px; margin-left: 6px;
  white-space: nowrap; }
.badge { background: #e5e7eb; color: #374151; }
.badge.rel { background: #bbf7d0; color: #14532d; }
.badge.miss { background: #fecaca; color: #7f1d1d; }
.title { font-weight: 600; }
.snippet { color: #4b5563; font-size: 13px; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
""".strip()


def write_html(
    path: str | Path, result: Mapping[str, Any], dataset: BeirDataset | None = None, worst: int = 10
) -> Path:
    """Writes the HTML report of ``result`` to ``path`` (one self-contained UTF-8 file), creating parents.

    Args:
        path: The HTML file to write.
        result: A result dict (see evaluation.report); ``"run"``, ``"reference"`` and ``"thresholds"`` are
            optional. Without ``"run"`` the worst-queries section only says why it is missing.
        dataset: The dataset the result was scored on: query texts, qrels and the corpus (streamed once, and
            only the documents shown are kept) for the worst queries. None shows document ids only.
        worst: How many of the lowest-scoring queries to show (0 shows none).

    Returns:
        The path written.

    Raises:
        ValueError: If a metric key is not ``name`` or ``name@k``.
    """
    mean: Mapping[str, float] = result["metrics"]["mean"]
    per_query: Mapping[str, Mapping[str, float]] = result["metrics"]["per_query"]
    title = result.get("title")
    heading = f"Evaluation report: {title}" if title else "Evaluation report"
    focus = _focus_metric(mean)

    body = [f"<h1>{_e(heading)}</h1>", _nav(result)]
    body += ['<h2 id="provenance">What produced this</h2>', _provenance(result.get("provenance", {}))]
    body += [f'<h2 id="metrics">Metrics (mean over {len(per_query)} queries)</h2>', _metrics_table(mean)]
    if "reference" in result or "thresholds" in result:
        body.append('<h2 id="comparison">Comparison</h2>')
        if "reference" in result:
            body += ["<h3>Reference scores</h3>", _reference_table(mean, result["reference"])]
        if "thresholds" in result:
            body += ["<h3>Thresholds (minimums)</h3>", _threshold_table(mean, result["thresholds"])]
    if "operations" in result or "parity" in result:
        body.append('<h2 id="operations">Beyond relevance</h2>')
        body.append(
            _provenance({"operations": result.get("operations", {}), "parity": result.get("parity", {})})
        )
    body.append('<h2 id="plots">Plots</h2>')
    body.append(_cutoff_plot(mean))
    if focus is not None:
        body.append(_distribution_plot(per_query, focus, mean.get(focus)))
    body.append('<h2 id="worst">Worst queries</h2>')
    body.append(_worst_section(result, per_query, focus, dataset, worst))

    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(heading)}</title>",
            f"<style>\n{_CSS}\n</style>",
            "</head>",
            "<body>",
            "<main>",
            *body,
            "</main>",
            "</body>",
            "</html>",
        ]
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page + "\n", encoding="utf-8")
    return out


# --- tables ---------------------------------------------------------------------------------------------


def _nav(result: Mapping[str, Any]) -> str:
    links = [("provenance", "Provenance"), ("metrics", "Metrics")]
    if "reference" in result or "thresholds" in result:
        links.append(("comparison", "Comparison"))
    if "operations" in result or "parity" in result:
        links.append(("operations", "Beyond relevance"))
    links += [("plots", "Plots"), ("worst", "Worst queries")]
    return "<nav>" + "".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in links) + "</nav>"


def _provenance(provenance: Mapping[str, Any]) -> str:
    items = flatten(provenance)
    if not items:
        return '<p class="note">The result records no provenance.</p>'
    rows = [
        f'<tr><td class="key">{_e(key)}</td><td class="value">{_e(_text(value))}</td></tr>'
        for key, value in items
    ]
    return _table(["Item", "Value"], rows, css="provenance")


def _metrics_table(mean: Mapping[str, float]) -> str:
    names, columns, cells = metric_grid(mean)
    header = ["Metric", *(f"@{k}" if k is not None else "full" for k in columns)]
    rows = []
    for name in names:
        values = "".join(
            f'<td class="num">{cells[name][k]:.4f}</td>'
            if k in cells[name]
            else '<td class="num muted">-</td>'
            for k in columns
        )
        rows.append(f"<tr><td>{_e(_FAMILY_LABELS.get(name, name))}</td>{values}</tr>")
    return _table(header, rows, numeric_from=1)


def _reference_table(mean: Mapping[str, float], reference: Mapping[str, float]) -> str:
    rows = []
    for key in sorted(reference):
        ref = float(reference[key])
        if key in mean:
            ours = float(mean[key])
            delta = ours - ref
            css = "ok" if delta >= 0 else "bad"
            cells = f'<td class="num">{ours:.4f}</td><td class="num">{ref:.4f}</td>'
            cells += f'<td class="num {css}">{delta:+.4f}</td>'
        else:
            cells = (
                f'<td class="num bad">not computed</td><td class="num">{ref:.4f}</td><td class="num">-</td>'
            )
        rows.append(f"<tr><td>{_e(key)}</td>{cells}</tr>")
    return _table(["Metric", "Ours", "Reference", "Delta"], rows, numeric_from=1)


def _threshold_table(mean: Mapping[str, float], thresholds: Mapping[str, float]) -> str:
    rows = []
    for key in sorted(thresholds):
        minimum = float(thresholds[key])
        if key not in mean:
            cells = f'<td class="num bad">not computed</td><td class="num">{minimum:.4f}</td>'
            cells += '<td class="bad">error</td>'
        else:
            ours = float(mean[key])
            passed = ours >= minimum
            cells = f'<td class="num">{ours:.4f}</td><td class="num">{minimum:.4f}</td>'
            cells += (
                '<td class="ok">pass</td>' if passed else f'<td class="bad">fail ({ours - minimum:+.4f})</td>'
            )
        rows.append(f"<tr><td>{_e(key)}</td>{cells}</tr>")
    return _table(["Metric", "Ours", "Minimum", "Status"], rows, numeric_from=1, numeric_to=3)


def _table(
    header: list[str],
    rows: list[str],
    css: str = "",
    numeric_from: int | None = None,
    numeric_to: int | None = None,
) -> str:
    def th(index: int, label: str) -> str:
        numeric = (
            numeric_from is not None and index >= numeric_from and (numeric_to is None or index < numeric_to)
        )
        return f'<th class="num">{_e(label)}</th>' if numeric else f"<th>{_e(label)}</th>"

    head = "".join(th(index, label) for index, label in enumerate(header))
    css_attr = f' class="{css}"' if css else ""
    return (
        f"<table{css_attr}><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )


# --- plots ----------------------------------------------------------------------------------------------


def _cutoff_plot(mean: Mapping[str, float]) -> str:
    names, columns, cells = metric_grid(mean)
    series = {name: sorted((k, v) for k, v in cells[name].items() if k is not None) for name in names}
    series = {name: points for name, points in series.items() if points}
    if not series:
        return '<p class="note">No metric has a cut-off (name@k), so there is nothing to plot by k.</p>'
    cutoffs = [k for k in columns if k is not None]
    fig = _figure()
    ax = fig.subplots()
    for name, points in series.items():
        ks = [k for k, _ in points]
        ax.plot(
            ks,
            [v for _, v in points],
            marker="o",
            linewidth=2,
            label=_FAMILY_LABELS.get(name, name),
            color=_COLOURS.get(name),
        )
    if len(cutoffs) > 1 and cutoffs[-1] / cutoffs[0] >= 10:
        ax.set_xscale("log")
    ax.set_xticks(cutoffs)
    ax.set_xticklabels([str(k) for k in cutoffs])
    ax.minorticks_off()
    ax.set_xlabel("cut-off k")
    ax.set_ylabel("mean over queries")
    top = max(v for points in series.values() for _, v in points)
    ax.set_ylim(0, max(1.0, top) * 1.05)
    ax.grid(True, color="#e5e7eb")
    ax.set_title("Mean metric by cut-off")
    ax.legend(loc="best", frameon=False)
    caption = (
        "Each metric family's mean at every cut-off k; metrics without a cut-off are in the table above."
    )
    return _img(fig, "Mean metric value per cut-off k, one line per metric family", caption)


def _distribution_plot(per_query: Mapping[str, Mapping[str, float]], focus: str, mean: float | None) -> str:
    values = [float(scores[focus]) for _, scores in sorted(per_query.items()) if focus in scores]
    if not values:
        return f'<p class="note">No query has a per-query {_e(focus)} value to plot.</p>'
    fig = _figure()
    ax = fig.subplots()
    unit = all(0.0 <= v <= 1.0 for v in values)
    bins = [i / 10 for i in range(11)] if unit else 10
    counts, _, _ = ax.hist(values, bins=bins, color="#60a5fa", edgecolor="#1e40af")
    ax.set_ylim(0, max(float(max(counts)), 1.0) * 1.2)  # headroom for the legend
    if mean is not None and math.isfinite(mean):
        ax.axvline(mean, color="#b91c1c", linestyle="--", linewidth=1.5, label=f"mean {mean:.4f}")
        ax.legend(loc="best", frameon=False)
    if unit:
        ax.set_xlim(0, 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"per-query {focus}")
    ax.set_ylabel("queries")
    ax.set_title(f"Distribution of {focus} over {len(values)} queries")
    ax.grid(True, axis="y", color="#e5e7eb")
    caption = f"Histogram of per-query {focus} (bins of 0.1)." if unit else f"Histogram of per-query {focus}."
    return _img(fig, f"Histogram of per-query {focus}", caption)


def _figure() -> Figure:
    fig = Figure(figsize=(8.8, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _img(fig: Figure, alt: str, caption: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


# --- worst queries --------------------------------------------------------------------------------------


def _focus_metric(mean: Mapping[str, float]) -> str | None:
    """nDCG@10, else the nDCG with the smallest cut-off, else the first metric in report order."""
    if "ndcg@10" in mean:
        return "ndcg@10"
    names, columns, cells = metric_grid(mean)
    for name in names:
        for k in columns:
            if k in cells[name]:
                return f"{name}@{k}" if k is not None else name
    return None


def _worst_section(
    result: Mapping[str, Any],
    per_query: Mapping[str, Mapping[str, float]],
    focus: str | None,
    dataset: BeirDataset | None,
    worst: int,
) -> str:
    if "run" not in result:
        return (
            '<p class="note">The result has no run (the documents retrieved per query), '
            "so the worst queries cannot be shown.</p>"
        )
    if focus is None or worst <= 0:
        return '<p class="note">No worst queries requested.</p>'
    run: Mapping[str, Mapping[str, float]] = result["run"]
    chosen = sorted(
        (qid for qid in per_query if focus in per_query[qid]), key=lambda qid: (per_query[qid][focus], qid)
    )[:worst]
    rankings = {qid: trec_order(run.get(qid, {})) for qid in chosen}
    depth = max((len(ranking) for ranking in run.values()), default=0)
    relevant = {qid: _relevant(dataset, qid) for qid in chosen}
    needed = {doc for qid in chosen for doc in rankings[qid][:TOP_DOCS]} | {
        doc for docs in relevant.values() for doc in docs
    }
    corpus = _read_docs(dataset, needed) if dataset is not None else {}

    parts = [
        f"<p>The {len(chosen)} lowest-scoring queries by <code>{_e(focus)}</code> (ties by query id), each "
        f"with its top {TOP_DOCS} retrieved documents and its relevant documents; the run holds up to {depth} "
        "documents per query. Relevant documents are highlighted in green.</p>"
    ]
    if dataset is None:
        parts.append(
            '<p class="note">No dataset was given: document ids only, without query texts, titles, '
            "snippets or judgments.</p>"
        )
    for number, qid in enumerate(chosen, start=1):
        parts.append(
            _query_card(
                number, qid, per_query[qid][focus], focus, rankings[qid], run, dataset, relevant, corpus
            )
        )
    return "\n".join(parts)


def _relevant(dataset: BeirDataset | None, qid: str) -> dict[str, int]:
    if dataset is None:
        return {}
    return {doc: grade for doc, grade in dataset.qrels.get(qid, {}).items() if grade >= 1}


def _read_docs(dataset: BeirDataset, needed: set[str]) -> dict[str, tuple[str, str]]:
    """One pass over the corpus keeping (title, text) of the ``needed`` ids; stops once all are found.

    Lines that are not JSON objects are skipped: a report should not fail on one bad corpus line.
    """
    found: dict[str, tuple[str, str]] = {}
    if not needed:
        return found
    for record in dataset.iter_corpus(skip_bad=True):
        doc_id = str(record.get("_id"))
        if doc_id in needed and doc_id not in found:
            found[doc_id] = (str(record.get("title") or ""), str(record.get("text") or ""))
            if len(found) == len(needed):
                break
    return found


def _query_card(
    number: int,
    qid: str,
    value: float,
    focus: str,
    ranking: list[str],
    run: Mapping[str, Mapping[str, float]],
    dataset: BeirDataset | None,
    relevant: Mapping[str, Mapping[str, int]],
    corpus: Mapping[str, tuple[str, str]],
) -> str:
    scores = run.get(qid, {})
    rank_of = {doc: rank for rank, doc in enumerate(ranking, start=1)}
    judged = dataset.qrels.get(qid, {}) if dataset is not None else {}
    parts = [
        '<section class="query">',
        f"<h3><span>{number}. Query <code>{_e(qid)}</code></span>"
        f'<span class="num">{_e(focus)} = {value:.4f}</span></h3>',
    ]
    if dataset is not None:
        text = dataset.queries.get(qid)
        parts.append(
            f"<blockquote>{_e(text)}</blockquote>" if text is not None else _note("query text not found")
        )

    shown = f"top {min(TOP_DOCS, len(ranking))} of {len(ranking)}" if ranking else "none"
    parts.append(f"<h4>Retrieved ({shown})</h4>")
    if not ranking:
        parts.append(_note("nothing retrieved for this query"))
    else:
        rows = []
        for rank, doc in enumerate(ranking[:TOP_DOCS], start=1):
            grade = judged.get(doc)
            is_relevant = grade is not None and grade >= 1
            badge = f'<span class="badge rel">relevant, grade {grade}</span>' if is_relevant else ""
            if grade == 0:
                badge = '<span class="badge">judged not relevant</span>'
            css = ' class="relevant"' if is_relevant else ""
            rows.append(
                f'<tr{css}><td class="num">{rank}</td><td class="num">{float(scores[doc]):.4f}</td>'
                f'<td class="doc">{_doc_cell(doc, corpus, dataset is not None, badge)}</td></tr>'
            )
        parts.append(_table(["Rank", "Score", "Document"], rows, css="docs", numeric_from=0, numeric_to=2))

    if dataset is not None:
        docs = relevant.get(qid, {})
        parts.append(f"<h4>Relevant ({len(docs)})</h4>")
        if not docs:
            parts.append(_note("no document is judged relevant for this query"))
        else:
            rows = []
            for doc in sorted(docs, key=lambda d: (-docs[d], rank_of.get(d, math.inf), d)):
                got_rank = rank_of.get(doc)
                got = (
                    f"{got_rank}" if got_rank is not None else '<span class="badge miss">not retrieved</span>'
                )
                top = got_rank is not None and got_rank <= TOP_DOCS
                css = ' class="relevant"' if top else ' class="missing"'
                rows.append(
                    f'<tr{css}><td class="num">{docs[doc]}</td><td class="num">{got}</td>'
                    f'<td class="doc">{_doc_cell(doc, corpus, True)}</td></tr>'
                )
            parts.append(
                _table(["Grade", "Rank", "Document"], rows, css="docs", numeric_from=0, numeric_to=2)
            )
    parts.append("</section>")
    return "\n".join(parts)


def _doc_cell(doc: str, corpus: Mapping[str, tuple[str, str]], have_corpus: bool, badge: str = "") -> str:
    """The document id, its title and ``badge`` (HTML) on one line, then a snippet of its text."""
    cell = f"<code>{_e(doc)}</code>"
    if not have_corpus:
        return cell + badge
    if doc not in corpus:
        return cell + ' <span class="muted">(not in the corpus)</span>' + badge
    title, text = corpus[doc]
    if title:
        cell += f' <span class="title">{_e(title)}</span>'
    cell += badge
    if text:
        cell += f'<div class="snippet">{_e(_snippet(text))}</div>'
    return cell


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) <= SNIPPET_CHARS:
        return flat
    cut = flat[:SNIPPET_CHARS].rsplit(" ", 1)[0]
    return cut + " \N{HORIZONTAL ELLIPSIS}"


# --- helpers --------------------------------------------------------------------------------------------


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
