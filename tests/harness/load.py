"""Load harness: drive the webhook receiver and the search service on loopback at a stated concurrency, check
that nothing is lost, and report throughput, latency, rejections and the server's memory.

    python -m tests.harness.load --target all --concurrency 16 --duration 60 --out load.json   # release check
    python -m tests.harness.load --target all --concurrency 4 --duration 3                      # what CI runs

Each target runs twice against a fresh server process (``tierflow webhook serve`` or ``tierflow serve`` on
the demo index) whose ``max_concurrent`` is the stated concurrency N:

- **nominal**: N client threads, each on a keep-alive connection, sending as fast as answers come back;
- **overload**: ``--overload`` × N client threads (10 by default) against the same limit. They do not wait
  out ``Retry-After`` (the server's behaviour under clients that do not back off) unless
  ``--honor-retry-after`` is given (polite clients: how much of the nominal throughput remains).

Every request counts as accepted (2xx), rejected (429/503, and then it must carry ``Retry-After``) or an
error (any other status, a malformed answer, a broken connection). Latencies are per request, from
sending to the end of the answer. The server's memory is read from ``/proc/PID/status`` (``VmRSS`` sampled
every 50 ms, ``VmHWM`` and ``Threads`` at the end): its peak under overload must stay within
``--rss-slack-mib`` of its peak at N, the bound that shows it refuses work instead of growing. The CPU
seconds the server (after start-up) and the clients used are reported too: both share the machine.

Webhook deliveries are signed events with unique ids. After each phase the receiver is stopped (SIGTERM)
and its durable queue read back: every delivery answered 2xx must be in it exactly once (``lost`` and
``duplicated`` are 0), and none answered with a refusal may be (``stored_after_refusal`` is 0). A delivery
whose connection broke may be in it or not (``stored_unanswered``): the sender retries and gets 409.

Searches rotate over a few queries with ``k = 5``; an answer counts as accepted only when it is a JSON
object with results and the generation searched.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("webhook", "search")
SECRET = "whsec_" + base64.b64encode(b"tierflow-load-harness-key-0123456").decode()
QUERIES = (
    "how do Kafka consumers resume after a restart",
    "fast approximate vector search",
    "bread with wild yeast",
    "why is the sky blue",
    "change data capture from the write-ahead log",
    "ranking metrics for search evaluation",
    "cheap storage for rarely read data",
    "verifying webhook signatures",
)
REJECTED = (429, 503)
CLIENT_TIMEOUT_S = 60.0
Say = Callable[[str], None]


@dataclass(frozen=True)
class Outcome:
    """One request: its key (the webhook id), status (None: no answer), latency, and what was wrong."""

    key: str
    status: int | None
    latency_s: float
    retry_after: bool = False
    error: str | None = None


# --- the server under test -----------------------------------------------------------------------------


class ServerProcess:
    """A ``tierflow`` server as a child process: started, watched (memory, threads) and stopped with SIGTERM.

    Args:
        command: The ``tierflow`` arguments.
        env: Extra environment (``TIERFLOW__*`` of the parent are dropped, so only these apply).
        workdir: Its working directory (no ``tierflow.toml`` there) and where its output goes.
        ready_line: The line of its standard output that says it serves.
    """

    def __init__(self, command: list[str], env: dict[str, str], workdir: Path, ready_line: str) -> None:
        self.command = [sys.executable, "-m", "tierflow.cli", *command]
        base = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW__")}
        self.env = {**base, "PYTHONPATH": str(REPO), **env}
        self.workdir = workdir
        self.ready_line = ready_line
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.samples: list[tuple[int, int]] = []  # (VmRSS kB, Threads)
        self.final: dict[str, int] = {}
        self.ready_cpu_s = self.final_cpu_s = 0.0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self, timeout_s: float = 300.0) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        out = self.workdir / "server.out"
        with open(out, "wb") as stdout, open(self.workdir / "server.err", "wb") as stderr:
            self.proc = subprocess.Popen(
                self.command, cwd=self.workdir, env=self.env, stdout=stdout, stderr=stderr
            )
        deadline = time.monotonic() + timeout_s
        while True:
            lines = out.read_text(errors="replace").splitlines()
            for line in lines:
                if "listening on http://" in line and not self.url:
                    self.url = line.split("listening on ", 1)[1].split("/v1/", 1)[0]
            if self.url and any(line.startswith(self.ready_line) for line in lines):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = (self.workdir / "server.err").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"{' '.join(self.command)} did not come up: {err}")
            time.sleep(0.1)
        self.ready_cpu_s = self.cpu_s()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.pid

    def status(self) -> dict[str, int]:
        """``VmRSS``, ``VmHWM`` (kB) and ``Threads`` from ``/proc/PID/status``."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "Threads"):
                out[name] = int(value.split()[0])
        return out

    def cpu_s(self) -> float:
        """User + system CPU seconds the server has used (``/proc/PID/stat``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        while not self._sampling.wait(0.05):
            try:
                status = self.status()
            except (OSError, ValueError):
                return
            self.samples.append((status["VmRSS"], status["Threads"]))

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait for a clean exit (SIGKILL after ``timeout_s``); the exit code."""
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.final = self.status()
                self.final_cpu_s = self.cpu_s()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def memory(self) -> dict[str, Any]:
        rss = [kb for kb, _ in self.samples] or [self.final.get("VmRSS", 0)]
        threads = [n for _, n in self.samples] or [self.final.get("Threads", 0)]
        return {
            "rss_start_mib": round(rss[0] / 1024, 1),
            "rss_peak_mib": round(max(rss) / 1024, 1),
            "vm_hwm_mib": round(self.final.get("VmHWM", max(rss)) / 1024, 1),
            "threads_peak": max(threads),
            "cpu_s": round(max(0.0, self.final_cpu_s - self.ready_cpu_s), 1),  # after start-up
            "samples": len(self.samples),
        }


# --- clients --------------------------------------------------------------------------------------------

Request = Callable[[int, int], tuple[str, bytes, dict[str, str]]]  # (client, n) -> key, body, headers
Check = Callable[[bytes], str | None]  # a 2xx body -> what is wrong with it, or None


def drive(
    url: str,
    path: str,
    request: Request,
    check: Check,
    concurrency: int,
    duration_s: float,
    honor_retry_after: bool = False,
) -> list[Outcome]:
    """``concurrency`` threads POST ``request(client, n)`` to ``url + path`` until ``duration_s`` is up
    (after a 429/503, waiting ``Retry-After`` seconds first when ``honor_retry_after``)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    outcomes: list[list[Outcome]] = [[] for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def client(number: int) -> None:
        mine = outcomes[number]
        connection = http.client.HTTPConnection(host, int(port), timeout=CLIENT_TIMEOUT_S)
        start.wait()
        n = 0
        while time.monotonic() < deadline[0]:
            key, body, headers = request(number, n)
            n += 1
            sent = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as err:
                mine.append(Outcome(key, None, time.perf_counter() - sent, error=type(err).__name__))
                connection.close()
                continue
            latency = time.perf_counter() - sent
            retry_after = response.getheader("Retry-After") is not None
            problem = None
            if 200 <= response.status < 300:
                problem = check(data)
            elif response.status not in REJECTED:
                problem = f"status {response.status}"
            mine.append(Outcome(key, response.status, latency, retry_after, problem))
            if honor_retry_after and response.status in REJECTED and retry_after:
                wait_s = float(response.getheader("Retry-After") or 0)
                time.sleep(max(0.0, min(wait_s, deadline[0] - time.monotonic())))
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), name=f"load-{i}") for i in range(concurrency)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + duration_s
    start.wait()
    for thread in threads:
        thread.join()
    return [outcome for mine in outcomes for outcome in mine]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _latency(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * 1000, 2),
        "p99": round(percentile(values, 99) * 1000, 2),
        "max": round(max(values, default=0.0) * 1000, 2),
    }


def summarise(outcomes: list[Outcome], duration_s: float) -> dict[str, Any]:
    """Counts, rates and latencies of one phase."""
    accepted = [o for o in outcomes if o.status is not None and 200 <= o.status < 300 and o.error is None]
    rejected = [o for o in outcomes if o.status in REJECTED]
    errors = Counter(o.error for o in outcomes if o.error is not None)
    return {
        "sent": len(outcomes),
        "accepted": len(accepted),
        "rejected": {str(code): sum(1 for o in rejected if o.status == code) for code in REJECTED},
        "rejected_without_retry_after": sum(1 for o in rejected if not o.retry_after),
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "throughput_rps": round(len(accepted) / duration_s, 1),
        "offered_rps": round(len(outcomes) / duration_s, 1),
        "latency_ms": _latency([o.latency_s for o in accepted]),
        "rejected_latency_ms": _latency([o.latency_s for o in rejected]),
    }


# --- webhook ---------------------------------------------------------------------------------------------


def _webhook_request(phase: str) -> Request:
    from connectors.webhooks import decode_secret, sign

    key = decode_secret(SECRET)
    text = "A load-test document. " * 8

    def make(client: int, n: int) -> tuple[str, bytes, dict[str, str]]:
        webhook_id = f"msg_{phase}_{client}_{n}"
        body = json.dumps({"doc_id": f"load-{client}-{n}", "version": n, "text": text}).encode()
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(key, webhook_id, stamp, body),
        }
        return webhook_id, body, headers

    return make


def _accepted_body(data: bytes) -> str | None:
    try:
        answer = json.loads(data)
    except ValueError:
        return "bad_answer"
    return None if isinstance(answer, dict) and "accepted" in answer else "bad_answer"


def verify_queue(queue_dir: Path, outcomes: list[Outcome]) -> dict[str, int]:
    """Read the receiver's queue back and compare it with what the clients were told."""
    from connectors.local_queue import LocalQueue
    from connectors.webhooks import record_identity

    stored: Counter[str] = Counter()
    with LocalQueue(queue_dir) as queue:
        offset = 0
        while batch := queue.read(offset, 10_000):
            stored.update(record_identity(record)[0] for _, record in batch)
            offset = batch[-1][0] + 1
    accepted = {o.key for o in outcomes if o.status is not None and 200 <= o.status < 300}
    refused = {o.key for o in outcomes if o.status is not None and not 200 <= o.status < 300}
    unanswered = {o.key for o in outcomes if o.status is None}
    sent = accepted | refused | unanswered
    return {
        "stored": sum(stored.values()),
        "lost": len(accepted - set(stored)),
        "duplicated": sum(1 for n in stored.values() if n > 1),
        "stored_after_refusal": len(refused & set(stored)),
        "stored_unanswered": len(unanswered & set(stored)),
        "stored_never_sent": len(set(stored) - sent),
    }


def webhook_phase(
    workdir: Path,
    phase: str,
    concurrency: int,
    limit: int,
    duration_s: float,
    rate_limit_per_s: float = 0.0,
    honor_retry_after: bool = False,
) -> dict[str, Any]:
    """One phase against a fresh ``tierflow webhook serve`` with ``max_concurrent = limit``."""
    queue_dir = workdir / "queue"
    env = {
        "TIERFLOW__WEBHOOK__SECRETS": SECRET,
        "TIERFLOW__WEBHOOK__MAX_CONCURRENT": str(limit),
        "TIERFLOW__WEBHOOK__RATE_LIMIT_PER_S": str(rate_limit_per_s),
    }
    command = ["webhook", "serve", "--port", "0", "--queue-dir", str(queue_dir)]
    server = ServerProcess(command, env, workdir, "tierflow webhooks: listening").start()
    cpu = time.process_time()
    try:
        outcomes = drive(
            server.url,
            "/v1/events",
            _webhook_request(phase),
            _accepted_body,
            concurrency,
            duration_s,
            honor_retry_after,
        )
    finally:
        exit_code = server.stop()
    return {
        "phase": phase,
        "concurrency": concurrency,
        "server_max_concurrent": limit,
        "duration_s": duration_s,
        **summarise(outcomes, duration_s),
        "client_cpu_s": round(time.process_time() - cpu, 1),
        "server": {**server.memory(), "exit_code": exit_code},
        "queue": verify_queue(queue_dir, outcomes),
    }


# --- search ----------------------------------------------------------------------------------------------


def build_demo_index(index_dir: Path) -> Path:
    """The demo corpus ingested into ``index_dir`` (the ``tierflow ingest`` command, in a subprocess)."""
    if not (index_dir / "CURRENT").exists():
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW__")}
        subprocess.run(
            [sys.executable, "-m", "tierflow.cli", "ingest", str(REPO / "tierflow" / "demo_data"),
             "--format", "beir", "--index", str(index_dir)],
            cwd=index_dir.parent, env={**env, "PYTHONPATH": str(REPO)}, check=True, capture_output=True,
        )  # fmt: skip
    return index_dir


def _search_request(client: int, n: int) -> tuple[str, bytes, dict[str, str]]:
    query = QUERIES[(client + n) % len(QUERIES)]
    body = json.dumps({"query": query, "k": 5}).encode()
    return f"q{client}-{n}", body, {"Content-Type": "application/json"}


def _search_answer(data: bytes) -> str | None:
    try:
        answer = json.loads(data)
    except ValueError:
        return "bad_answer"
    good = (
        isinstance(answer, dict)
        and isinstance(answer.get("results"), list)
        and answer["results"]
        and all("doc_id" in r and "score" in r for r in answer["results"])
        and isinstance(answer.get("generation"), int)
    )
    return None if good else "bad_answer"


def search_phase(
    workdir: Path,
    index: Path,
    phase: str,
    concurrency: int,
    limit: int,
    duration_s: float,
    honor_retry_after: bool = False,
) -> dict[str, Any]:
    """One phase against a fresh ``tierflow serve`` over ``index`` with ``max_concurrent = limit``."""
    env = {"TIERFLOW__SERVE__MAX_CONCURRENT": str(limit)}
    command = ["serve", "--index", str(index), "--port", "0"]
    server = ServerProcess(command, env, workdir, "tierflow serve: ready").start()
    cpu = time.process_time()
    try:
        outcomes = drive(
            server.url,
            "/v1/search",
            _search_request,
            _search_answer,
            concurrency,
            duration_s,
            honor_retry_after,
        )
    finally:
        exit_code = server.stop()
    return {
        "phase": phase,
        "concurrency": concurrency,
        "server_max_concurrent": limit,
        "duration_s": duration_s,
        **summarise(outcomes, duration_s),
        "client_cpu_s": round(time.process_time() - cpu, 1),
        "server": {**server.memory(), "exit_code": exit_code},
    }


# --- a target: nominal, then overload --------------------------------------------------------------------


def run_target(
    name: str,
    concurrency: int,
    duration_s: float,
    workdir: Path,
    overload: int = 10,
    rss_slack_mib: float = 64.0,
    index: Path | None = None,
    rate_limit_per_s: float = 0.0,
    honor_retry_after: bool = False,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    """Both phases of one target and the verdict.

    Args:
        name: ``webhook`` or ``search``.
        concurrency: N: client threads in the nominal phase, and the server's ``max_concurrent``.
        duration_s: Seconds each phase sends for.
        workdir: Scratch directory (queues, server output, the demo index).
        overload: The overload phase runs ``overload × N`` client threads.
        rss_slack_mib: How far the overload phase's peak RSS may exceed the nominal phase's.
        index: The index ``tierflow serve`` searches (default: the demo corpus, built in ``workdir``).
        rate_limit_per_s: The webhook receiver's per-client rate limit (0: off, so throughput is measured).
        honor_retry_after: Clients wait ``Retry-After`` after a refusal (default: they do not back off).
    """
    phases = (("nominal", concurrency), ("overload", concurrency * overload))
    results = []
    for phase, clients in phases:
        where = workdir / f"{name}-{phase}"
        shutil.rmtree(where, ignore_errors=True)
        if name == "webhook":
            result = webhook_phase(
                where, phase, clients, concurrency, duration_s, rate_limit_per_s, honor_retry_after
            )
        else:
            searched = index or build_demo_index(workdir / "demo-index" / "hot")
            result = search_phase(where, searched, phase, clients, concurrency, duration_s, honor_retry_after)
        results.append(result)
        say(
            f"{name} {phase}: {clients} clients, {result['throughput_rps']} accepted/s, "
            f"p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms, "
            f"rejected {result['rejected']}, errors {result['errors']}, "
            f"peak RSS {result['server']['rss_peak_mib']} MiB, threads {result['server']['threads_peak']}"
        )
    nominal, overloaded = results
    bound = nominal["server"]["rss_peak_mib"] + rss_slack_mib
    queues = [r["queue"] for r in results if "queue" in r]
    verdict = {
        "errors": sum(r["error_count"] for r in results),
        "rejected_without_retry_after": sum(r["rejected_without_retry_after"] for r in results),
        "lost": sum(q["lost"] for q in queues),
        "duplicated": sum(q["duplicated"] for q in queues),
        "stored_after_refusal": sum(q["stored_after_refusal"] + q["stored_never_sent"] for q in queues),
        "unclean_exits": sum(1 for r in results if r["server"]["exit_code"] != 0),
        "rss_bound_mib": round(bound, 1),
        "rss_bounded": overloaded["server"]["rss_peak_mib"] <= bound,
        "overload_rejected": sum(overloaded["rejected"].values()),
    }
    verdict["ok"] = (
        not any(verdict[k] for k in ("errors", "rejected_without_retry_after", "lost", "duplicated"))
        and not verdict["stored_after_refusal"]
        and not verdict["unclean_exits"]
        and verdict["rss_bounded"]
    )
    return {"target": name, "nominal": nominal, "overload": overloaded, **verdict}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.load", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="N: clients, and the server's limit (release: 16)"
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase (release checks: 60)")
    parser.add_argument(
        "--overload", type=int, default=10, help="the overload phase runs this many × N clients"
    )
    parser.add_argument(
        "--rss-slack-mib", type=float, default=64.0, help="overload peak RSS over nominal, at most"
    )
    parser.add_argument("--index", help="index for the search target (default: the demo corpus, built once)")
    parser.add_argument(
        "--webhook-rate-limit", type=float, default=0.0, help="per-client deliveries/s (0: off)"
    )
    parser.add_argument(
        "--honor-retry-after", action="store_true", help="clients wait Retry-After after a 429/503"
    )
    parser.add_argument("--workdir", default="", help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", help="write the JSON summary here")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tierflow-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    targets = TARGETS if args.target == "all" else (args.target,)
    say: Say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    results = [
        run_target(
            t,
            args.concurrency,
            args.duration,
            workdir,
            args.overload,
            args.rss_slack_mib,
            Path(args.index) if args.index else None,
            args.webhook_rate_limit,
            args.honor_retry_after,
            say,
        )
        for t in targets
    ]
    summary = {"targets": results, "ok": all(r["ok"] for r in results)}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
