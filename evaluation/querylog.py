"""Import a production query log (clicked/accepted document ids, JSONL) as a BEIR evaluation set.

Each line of the log is one search interaction, for example::

    {"query": "renewal terms for vendor contracts", "clicked": ["doc-12", "doc-7"], "accepted": ["doc-7"],
     "shown": ["doc-12", "doc-7", "doc-3"], "ts": "2026-11-20T10:00:00Z", "user": "u1", "session": "s1"}

Field names are configurable (:class:`QueryLogFields`). ``clicked``, ``accepted`` and ``shown`` are optional
lists of doc ids (strings; integers are coerced to strings). ``shown`` is validated but not graded.

Grading, per (query, doc) pair over the whole log (after the time filter):

* grade 2 (accepted) when the doc was accepted at least once;
* grade 1 (clicked) when it was only clicked, and clicked in at least ``min_clicks`` interactions;
* either grade also needs evidence (a click or an acceptance) from ``min_sessions`` distinct sessions; an
  interaction without a session id counts as a session of its own.

Queries are grouped by normalised text (Unicode NFKC, casefold, whitespace collapsed) and identified by
``q-`` plus the first 16 hex digits of the sha256 of that text, so re-importing the same log, or a log that
has grown, keeps the ids. Queries left without a relevant document are dropped (and counted).

Output directory (a BEIR dataset, written to a temporary sibling and swapped in whole)::

    <out>/queries.jsonl       {"_id", "text"}, sorted by id; the text is the query's most frequent form
    <out>/qrels/<split>.tsv   header, then "query-id<TAB>corpus-id<TAB>grade" sorted by query and doc id
    <out>/corpus.jsonl        symlink to (or copy of) ``corpus``, only when ``corpus`` is given
    <out>/deadletter.jsonl    one :class:`~tierflow.deadletter.DeadLetter` per rejected line / unknown doc
    <out>/import.json         counts, options and the log's sha256

Every file is a function of the log and the options only (dead letters carry ``rejected_at: 0.0``), so two
imports of the same log are byte-identical.

Dead-letter reasons: ``not_utf8``, ``malformed_json``, ``not_object``, ``missing_query``, ``wrong_type``,
``bad_time``, ``missing_time`` (a time filter is set and the line has no time) and ``unknown_doc`` (the
line was used, but this doc id is not in the corpus).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import unicodedata
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tierflow import jsonparse
from tierflow.deadletter import DeadLetter
from tierflow.errors import BadRecord, ConfigError, TierflowError
from tierflow.jsonparse import json_type
from tierflow.records import SourcePosition

QRELS_HEADER = "query-id\tcorpus-id\tscore\n"
DEADLETTER_FILE = "deadletter.jsonl"
IMPORT_FILE = "import.json"
GRADE_ACCEPTED = 2
GRADE_CLICKED = 1

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class QueryLogFields:
    """Names of the fields read from each log line.

    Attributes:
        query: The query text (required, a non-empty string).
        clicked: Doc ids the user clicked (optional list).
        accepted: Doc ids the user accepted (optional list); graded above clicks.
        shown: Doc ids that were shown (optional list; validated, not graded).
        time: When the interaction happened: ISO 8601 text (naive means UTC) or epoch seconds.
        session: Session id (string or integer) counted by ``min_sessions``.
    """

    query: str = "query"
    clicked: str = "clicked"
    accepted: str = "accepted"
    shown: str = "shown"
    time: str = "ts"
    session: str = "session"


@dataclass
class _Interaction:
    """One valid line: normalised query, its surface form, session key and (known) doc ids."""

    key: str
    surface: str
    session: str
    clicked: set[str]
    accepted: set[str]


@dataclass
class _Evidence:
    """What the log says about one (query, doc) pair."""

    clicks: int = 0
    accepts: int = 0
    sessions: set[str] = field(default_factory=set)


def normalise_query(text: str) -> str:
    """The grouping key of a query: Unicode NFKC, casefolded, whitespace collapsed and stripped.

    Args:
        text: The query as logged.

    Returns:
        The normalised text (empty if the query has no visible characters).

    Example:
        >>> normalise_query("  Renewal\\tTERMS ")
        'renewal terms'
    """
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def query_id(normalised: str) -> str:
    """The stable id of a normalised query: ``q-`` and the first 16 hex digits of its sha256.

    Args:
        normalised: Output of :func:`normalise_query`.

    Returns:
        The query id, e.g. ``q-1b4f0e9851971998``.
    """
    return "q-" + hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


def parse_time(value: Any) -> datetime:
    """Parses an interaction time or a ``since``/``until`` bound to an aware UTC datetime.

    Args:
        value: ISO 8601 text (``Z`` allowed; naive means UTC), epoch seconds, or a datetime.

    Returns:
        The time in UTC.

    Raises:
        ValueError: If the value is of another type or does not parse.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value, tz=UTC)
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.strip())
    else:
        raise ValueError(f"expected ISO 8601 text or epoch seconds, got {type(value).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def import_query_log(
    log_path: str | Path,
    out_dir: str | Path,
    *,
    corpus: str | Path | None = None,
    split: str = "test",
    fields: QueryLogFields = QueryLogFields(),  # noqa: B008 - frozen, safe as a default
    min_clicks: int = 1,
    min_sessions: int = 1,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    link_corpus: bool = True,
) -> dict[str, Any]:
    """Turns a JSONL query log into a BEIR dataset directory (see the module docstring).

    Args:
        log_path: The query log, one JSON object per line.
        out_dir: The dataset directory to write; it must not exist, be empty, or hold an earlier import
            (an ``import.json``), which is replaced whole.
        corpus: A BEIR ``corpus.jsonl`` or a dataset directory holding one. Doc ids missing from it are
            dropped and dead-lettered as ``unknown_doc``; ``None`` checks nothing and writes no corpus
            (the output then needs a ``corpus.jsonl`` before :func:`evaluation.beir.load_beir` accepts it).
        split: Name of the qrels file, ``qrels/<split>.tsv``.
        fields: Names of the fields read from each line.
        min_clicks: Interactions that must click a clicked-only doc for the query before it counts.
        min_sessions: Distinct sessions that must click or accept a doc for the query before it counts.
        since: Keep interactions at or after this time (ISO 8601 or datetime; naive means UTC).
        until: Keep interactions strictly before this time.
        link_corpus: Symlink ``corpus.jsonl`` to ``corpus`` (default) instead of copying it.

    Returns:
        The content written to ``import.json``: options, the log's sha256, counts of lines, interactions,
        queries and judgments by grade, and what was dropped and why.

    Raises:
        ConfigError: If the log or corpus is missing or unreadable, an option is invalid, or ``out_dir``
            is something other than an earlier import.
    """
    log = Path(log_path)
    if not log.is_file():
        raise ConfigError(f"query log {log} does not exist or is not a file")
    if not split or "/" in split or "\\" in split or split.startswith("."):
        raise ConfigError(f"split must be a plain file name such as 'test', got {split!r}")
    for name, value in (("min_clicks", min_clicks), ("min_sessions", min_sessions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    start, end = _bound("since", since), _bound("until", until)
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    out = Path(out_dir)
    _check_out_dir(out)
    corpus_file = _corpus_file(corpus) if corpus is not None else None
    known = _corpus_ids(corpus_file) if corpus_file is not None else None

    reader = _LogReader(log, fields, start, end, known)
    interactions = reader.read()
    queries, qrels, below_threshold = _grade(interactions, min_clicks, min_sessions)
    grades = Counter(grade for docs in qrels.values() for grade in docs.values())
    seen = {interaction.key for interaction in interactions}
    bad = Counter(letter.reason for letter in reader.letters if letter.reason != "unknown_doc")
    summary: dict[str, Any] = {
        "source": {"path": str(log), "sha256": reader.sha256.hexdigest(), "bytes": reader.size},
        "corpus": (
            {"path": str(corpus_file), "sha256": _sha256(corpus_file), "documents": len(known or ())}
            if corpus_file is not None
            else None
        ),
        "split": split,
        "options": {
            "fields": asdict(fields),
            "min_clicks": min_clicks,
            "min_sessions": min_sessions,
            "since": start.isoformat() if start else None,
            "until": end.isoformat() if end else None,
        },
        "lines_read": reader.lines,
        "blank_lines": reader.blank,
        "interactions_used": len(interactions),
        "interactions_without_feedback": sum(1 for i in interactions if not (i.clicked or i.accepted)),
        "queries": len(queries),
        "judgments": {
            "total": sum(grades.values()),
            "by_grade": {str(grade): grades[grade] for grade in (GRADE_ACCEPTED, GRADE_CLICKED)},
        },
        "dropped": {
            "queries_no_relevant_docs": len(seen) - len(queries),
            "judgments_below_threshold": below_threshold,
            "unknown_doc_ids": reader.unknown_occurrences,
            "unknown_doc_ids_distinct": len(reader.unknown_ids),
            "filtered_by_time": reader.filtered,
            "bad_lines": {"total": sum(bad.values()), "by_reason": dict(sorted(bad.items()))},
        },
        "deadletters": {"file": DEADLETTER_FILE, "count": len(reader.letters)},
    }
    _write_dataset(out, split, queries, qrels, reader.letters, summary, corpus_file, link_corpus)
    return summary


class _LogReader:
    """Reads the log line by line, hashing it, dead-lettering bad lines and keeping the good ones."""

    def __init__(
        self,
        path: Path,
        fields: QueryLogFields,
        since: datetime | None,
        until: datetime | None,
        known: set[str] | None,
    ) -> None:
        self.path = path
        self.fields = fields
        self.since = since
        self.until = until
        self.known = known
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.lines = 0
        self.blank = 0
        self.filtered = 0
        self.unknown_occurrences = 0
        self.unknown_ids: set[str] = set()
        self.letters: list[DeadLetter] = []

    def read(self) -> list[_Interaction]:
        """Returns the valid interactions inside the time window, in file order."""
        interactions: list[_Interaction] = []
        try:
            with self.path.open("rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    self.sha256.update(raw)
                    self.size += len(raw)
                    self.lines += 1
                    line = raw.rstrip(b"\r\n")
                    if not line.strip():
                        self.blank += 1
                        continue
                    try:
                        interaction = self._parse(line, number)
                    except BadRecord as err:
                        stage = (
                            "parse"
                            if err.reason in ("not_utf8", "malformed_json", "not_object")
                            else "validate"
                        )
                        self._reject(err.reason, err.detail, stage, number, line)
                        continue
                    if interaction is not None:
                        interactions.append(interaction)
        except OSError as err:
            raise ConfigError(f"cannot read query log {self.path}: {err}") from err
        return interactions

    def _reject(
        self, reason: str, detail: str, stage: str, number: int, line: bytes, doc: str | None = None
    ) -> None:
        position = SourcePosition("querylog", str(self.path), f"line:{number}")
        self.letters.append(DeadLetter(reason, detail, stage, position, line, doc, rejected_at=0.0))

    def _parse(self, line: bytes, number: int) -> _Interaction | None:
        try:
            record = jsonparse.loads(line)
        except jsonparse.JsonRejected as err:
            raise BadRecord(err.reason, f"line {number} is not usable JSON: {err.detail}") from err
        if not isinstance(record, dict):
            raise BadRecord("not_object", f"expected a JSON object, got a JSON {json_type(record)}")
        names = self.fields
        query = record.get(names.query)
        if query is None:
            raise BadRecord("missing_query", f"no {names.query!r} field")
        if not isinstance(query, str):
            raise BadRecord("wrong_type", f"{names.query!r} must be a string, got a JSON {json_type(query)}")
        key = normalise_query(query)
        if not key:
            raise BadRecord("missing_query", f"{names.query!r} is empty")
        clicked = _doc_ids(record, names.clicked)
        accepted = _doc_ids(record, names.accepted)
        _doc_ids(record, names.shown)
        session = record.get(names.session)
        if session is None:
            session_key = f"line:{number}"
        elif isinstance(session, str | int) and not isinstance(session, bool):
            session_key = f"session:{session}"
        else:
            raise BadRecord(
                "wrong_type",
                f"{names.session!r} must be a string or integer, got a JSON {json_type(session)}",
            )
        if not self._in_window(record):
            self.filtered += 1
            return None
        if self.known is not None:
            for doc in sorted((clicked | accepted) - self.known):
                self.unknown_occurrences += 1
                self.unknown_ids.add(doc)
                detail = f"doc id {doc!r} is not in the corpus; the line's other doc ids were used"
                self._reject("unknown_doc", detail, "validate", number, line, doc)
            clicked &= self.known
            accepted &= self.known
        surface = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", query)).strip()
        return _Interaction(key, surface, session_key, clicked, accepted)

    def _in_window(self, record: dict[str, Any]) -> bool:
        name = self.fields.time
        value = record.get(name)
        if value is None:
            if self.since is not None or self.until is not None:
                raise BadRecord("missing_time", f"a time filter is set but the line has no {name!r} field")
            return True
        try:
            moment = parse_time(value)
        except (ValueError, OverflowError, OSError) as err:
            raise BadRecord("bad_time", f"{name!r} is not ISO 8601 text or epoch seconds: {err}") from err
        return (self.since is None or moment >= self.since) and (self.until is None or moment < self.until)


def _doc_ids(record: dict[str, Any], name: str) -> set[str]:
    value = record.get(name)
    if value is None:
        return set()
    if not isinstance(value, list):
        raise BadRecord("wrong_type", f"{name!r} must be a list of doc ids, got a JSON {json_type(value)}")
    ids: set[str] = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise BadRecord(
                "wrong_type", f"{name!r} must hold strings or integers, found a JSON {json_type(item)}"
            )
        doc = str(item)
        if not doc.strip():
            raise BadRecord("wrong_type", f"{name!r} holds an empty doc id")
        ids.add(doc)
    return ids


def _grade(
    interactions: list[_Interaction], min_clicks: int, min_sessions: int
) -> tuple[dict[str, str], dict[str, dict[str, int]], int]:
    """Query id -> text, query id -> doc id -> grade, and how many pairs missed the thresholds."""
    evidence: dict[str, dict[str, _Evidence]] = {}
    surfaces: dict[str, Counter[str]] = {}
    for interaction in interactions:
        surfaces.setdefault(interaction.key, Counter())[interaction.surface] += 1
        docs = evidence.setdefault(interaction.key, {})
        for doc in interaction.clicked | interaction.accepted:
            pair = docs.setdefault(doc, _Evidence())
            pair.clicks += doc in interaction.clicked
            pair.accepts += doc in interaction.accepted
            pair.sessions.add(interaction.session)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    below = 0
    for key, docs in evidence.items():
        judged: dict[str, int] = {}
        for doc, pair in docs.items():
            if len(pair.sessions) < min_sessions:
                below += 1
            elif pair.accepts:
                judged[doc] = GRADE_ACCEPTED
            elif pair.clicks >= min_clicks:
                judged[doc] = GRADE_CLICKED
            else:
                below += 1
        if judged:
            qid = query_id(key)
            # The most frequent surface form; ties go to the smallest string, so the choice is stable.
            queries[qid] = min(surfaces[key].items(), key=lambda item: (-item[1], item[0]))[0]
            qrels[qid] = judged
    return queries, qrels, below


def _bound(name: str, value: str | datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError, OSError) as err:
        raise ConfigError(
            f"{name} must be an ISO 8601 time such as 2026-11-20T10:00:00Z, got {value!r}"
        ) from err


def _check_out_dir(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / IMPORT_FILE).is_file():
        raise ConfigError(
            f"output directory {out} is not empty and holds no {IMPORT_FILE}; refusing to overwrite it "
            "(choose a new directory or an earlier import)"
        )


def _corpus_file(corpus: str | Path) -> Path:
    path = Path(corpus)
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.is_file():
        raise ConfigError(f"corpus {path} does not exist or is not a file (expected a BEIR corpus.jsonl)")
    return path


def _corpus_ids(path: Path) -> set[str]:
    """The document ids of a BEIR corpus. Lines that are not UTF-8 JSON objects with an ``_id`` are skipped:
    the ingest pipeline dead-letters them, so they are never documents a judgment could point at."""
    ids: set[str] = set()
    try:
        with path.open("rb") as lines:
            for line in lines:
                try:
                    record = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
                if isinstance(record, dict) and record.get("_id") not in (None, ""):
                    ids.add(str(record["_id"]))
    except OSError as err:
        raise ConfigError(f"cannot read corpus {path}: {err}") from err
    return ids


def _sha256(path: Path) -> str:
    with path.open("rb") as data:
        return hashlib.file_digest(data, "sha256").hexdigest()


def _write_dataset(
    out: Path,
    split: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    letters: list[DeadLetter],
    summary: dict[str, Any],
    corpus: Path | None,
    link_corpus: bool,
) -> None:
    """Writes the dataset into a temporary sibling of ``out`` and swaps it in whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = out.parent / f".{out.name}.importing-{token}"
    staging.mkdir()
    try:
        (staging / "qrels").mkdir()
        (staging / "queries.jsonl").write_text(
            "".join(
                json.dumps({"_id": qid, "text": queries[qid]}, ensure_ascii=False, sort_keys=True) + "\n"
                for qid in sorted(queries)
            ),
            encoding="utf-8",
        )
        (staging / "qrels" / f"{split}.tsv").write_text(
            QRELS_HEADER
            + "".join(
                f"{qid}\t{doc}\t{qrels[qid][doc]}\n" for qid in sorted(qrels) for doc in sorted(qrels[qid])
            ),
            encoding="utf-8",
        )
        (staging / DEADLETTER_FILE).write_text("".join(d.to_json() + "\n" for d in letters), encoding="utf-8")
        (staging / IMPORT_FILE).write_text(
            json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if corpus is not None:
            target = corpus.resolve()
            inside_out = out.exists() and target.is_relative_to(out.resolve())
            if link_corpus and not inside_out:
                (staging / "corpus.jsonl").symlink_to(target)
            else:
                shutil.copyfile(target, staging / "corpus.jsonl")
        if out.exists():
            retired = out.parent / f".{out.name}.replaced-{token}"
            out.rename(retired)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counts.items()) or "none"


def summary_text(summary: dict[str, Any], out_dir: str | Path) -> str:
    """A short human-readable report of an import.

    Args:
        summary: What :func:`import_query_log` returned.
        out_dir: Where the dataset was written.

    Returns:
        A few lines of text, without a trailing newline.
    """
    dropped = summary["dropped"]
    grades = summary["judgments"]["by_grade"]
    split = summary["split"]
    lines = [
        f"imported {summary['queries']} queries and {summary['judgments']['total']} judgments "
        f"(accepted/2: {grades['2']}, clicked/1: {grades['1']}) from {summary['interactions_used']} of "
        f"{summary['lines_read']} lines of {summary['source']['path']}",
        f"dataset: {out_dir} (queries.jsonl, qrels/{split}.tsv"
        + (", corpus.jsonl)" if summary["corpus"] else "; no corpus.jsonl: pass --corpus to check doc ids)"),
        f"dropped: {dropped['queries_no_relevant_docs']} queries without relevant docs, "
        f"{dropped['judgments_below_threshold']} judgments below --min-clicks/--min-sessions, "
        f"{dropped['unknown_doc_ids']} unknown doc ids, {dropped['filtered_by_time']} lines outside the time window",
        f"bad lines: {dropped['bad_lines']['total']} ({_counts_line(dropped['bad_lines']['by_reason'])}); "
        f"dead letters: {summary['deadletters']['count']} in {Path(out_dir) / DEADLETTER_FILE}",
    ]
    return "\n".join(lines)


def add_querylog_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``import-log`` arguments to ``parser`` (for wiring as a ``tierflow eval`` subcommand).

    Args:
        parser: The parser or subparser to extend; :func:`run_querylog` reads the parsed namespace.
    """
    defaults = QueryLogFields()
    parser.add_argument("log", metavar="LOG", help="query log, one JSON object per interaction per line")
    parser.add_argument(
        "out", metavar="OUT", help="BEIR dataset directory to write (new, or an earlier import)"
    )
    parser.add_argument(
        "--corpus", help="BEIR corpus.jsonl or dataset dir: drop doc ids it lacks, link it in"
    )
    parser.add_argument("--copy-corpus", action="store_true", help="copy the corpus instead of symlinking it")
    parser.add_argument("--split", default="test", help="qrels split to write (default: test)")
    for name in ("query", "clicked", "accepted", "shown", "time", "session"):
        default = getattr(defaults, name)
        parser.add_argument(
            f"--{name}-field", default=default, metavar="F", help=f"{name} field name (default: {default})"
        )
    parser.add_argument(
        "--min-clicks", type=int, default=1, help="clicks a clicked-only doc needs (default 1)"
    )
    parser.add_argument(
        "--min-sessions", type=int, default=1, help="distinct sessions a doc needs (default 1)"
    )
    parser.add_argument("--since", metavar="ISO", help="keep interactions at or after this time")
    parser.add_argument("--until", metavar="ISO", help="keep interactions before this time")


def run_querylog(args: argparse.Namespace) -> int:
    """Runs an import from parsed :func:`add_querylog_arguments` arguments and prints its summary.

    Args:
        args: The parsed namespace.

    Returns:
        0 on success.

    Raises:
        ConfigError: For a missing log or corpus, an invalid option or an unusable output directory.
    """
    fields = QueryLogFields(
        query=args.query_field,
        clicked=args.clicked_field,
        accepted=args.accepted_field,
        shown=args.shown_field,
        time=args.time_field,
        session=args.session_field,
    )
    summary = import_query_log(
        args.log,
        args.out,
        corpus=args.corpus,
        split=args.split,
        fields=fields,
        min_clicks=args.min_clicks,
        min_sessions=args.min_sessions,
        since=args.since,
        until=args.until,
        link_corpus=not args.copy_corpus,
    )
    print(summary_text(summary, args.out))
    return 0


def querylog_main(argv: list[str]) -> int:
    """``tierflow eval import-log LOG OUT [options]``: import a query log as a BEIR evaluation set.

    Args:
        argv: The arguments after ``import-log``.

    Returns:
        0 on success; 2 for a usage or configuration error (``tierflow: error: ...`` on stderr).
    """
    parser = argparse.ArgumentParser(
        prog="tierflow eval import-log",
        description="Import a JSONL query log with clicked/accepted doc ids as a BEIR evaluation set.",
    )
    add_querylog_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return run_querylog(args)
    except TierflowError as err:
        print(f"tierflow: error: {err}", file=sys.stderr)
        return 2
