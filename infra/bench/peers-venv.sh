#!/usr/bin/env bash
# The peer ingest benchmark's own virtualenv (pipelines/bench_peers.py runs LangChain and LlamaIndex in
# it): torch first (pinned; on this kind of machine a CPU build served from local disk), then the pinned
# peers of infra/bench/requirements-peers.txt. Kept out of tierflow's .venv: LangChain and LlamaIndex pull
# a large dependency tree that tierflow does not need. Idempotent: a venv built from the same
# requirements (sha256 recorded in VENV/.requirements.sha256) is left as it is.
#   bash infra/bench/peers-venv.sh                 # creates ./.bench-venv
#   TIERFLOW_BENCH_VENV=/tmp/bench-venv bash infra/bench/peers-venv.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${TIERFLOW_BENCH_VENV:-.bench-venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
REQUIREMENTS=infra/bench/requirements-peers.txt
STAMP="$VENV/.requirements.sha256"
say() { echo "peers-venv: $*" >&2; }

wanted=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ]; then
  say "$VENV is up to date ($REQUIREMENTS sha256 ${wanted:0:12}); nothing to do"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"  # a build that stops half way is redone next time
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch before the rest: letting sentence-transformers pull torch would fetch a multi-GB CUDA build.
torch=$(grep -E '^torch==' "$REQUIREMENTS")
say "installing $torch"
"${PIP[@]}" install "$torch"
say "installing $REQUIREMENTS"
"${PIP[@]}" install -r "$REQUIREMENTS"
"$VENV/bin/python" -m pip --disable-pip-version-check check >&2
echo "$wanted" >"$STAMP"
say "ready: $("$VENV/bin/python" -c '
from importlib.metadata import version as v
print(", ".join(f"{p} {v(p)}" for p in ("torch", "sentence-transformers", "langchain-core", "llama-index-core")))
') in $VENV"
