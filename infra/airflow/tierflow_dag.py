"""Airflow DAG for tierflow's scheduled jobs: batch ingest, then the lifecycle run, then the retrieval
evaluation gate, each one call of the same ``tierflow`` CLI that the Kubernetes CronJobs in ``infra/k8s``
run.

The tasks run where the Airflow worker runs (BashOperator), so that worker must be the machine that holds
the hot tier (``index_dir`` in the config is on its local flash). On Kubernetes, use the CronJobs in
``infra/k8s/base`` instead, or swap the operators for KubernetesPodOperators that mount the
``tierflow-hot`` claim.

Settings, from the environment of the process that parses this file:

- ``TIERFLOW_BIN``: the ``tierflow`` executable (default: ``tierflow`` on ``PATH``).
- ``TIERFLOW_CONFIG``: the ``tierflow.toml`` (default ``/etc/tierflow/tierflow.toml``).
- ``TIERFLOW_SOURCE``: what ingest reads, a directory or ``s3://bucket/prefix``.
- ``TIERFLOW_REPO``: a checkout of tierflow: the evaluation suite and its baseline live there.
- ``TIERFLOW_WORKDIR``: evaluation reports (one folder per run) and the suite's index cache.
- ``TIERFLOW_SCHEDULE``: a cron expression (default: every day at 02:00 UTC).

``tierflow eval run`` exits 1 when a metric drops past the suite's gate (``evaluation/suites/scifact.toml``),
which fails the DAG run; its reports stay in ``TIERFLOW_WORKDIR/eval/<date>``.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.x
    from airflow import DAG  # type: ignore[no-redef,attr-defined,unused-ignore]
    from airflow.operators.bash import BashOperator  # type: ignore[no-redef,unused-ignore]

TIERFLOW = os.environ.get("TIERFLOW_BIN", "tierflow")
CONFIG = os.environ.get("TIERFLOW_CONFIG", "/etc/tierflow/tierflow.toml")
SOURCE = os.environ.get("TIERFLOW_SOURCE", "s3://tierflow-docs/incoming/")
REPO = os.environ.get("TIERFLOW_REPO", "/opt/tierflow")
WORKDIR = os.environ.get("TIERFLOW_WORKDIR", "/var/lib/tierflow/airflow")
SCHEDULE = os.environ.get("TIERFLOW_SCHEDULE", "0 2 * * *")
SUITE = "evaluation/suites/scifact.toml"  # relative to REPO; its dataset and baseline paths are too


def tierflow(*args: str) -> str:
    """A bash command line that runs ``tierflow`` with ``args``, each one quoted."""
    return shlex.join([TIERFLOW, *args])


with DAG(
    dag_id="tierflow",
    description="tierflow: batch ingest -> lifecycle -> evaluation gate, through the tierflow CLI",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # The jobs share one index: a second run waits until the first is done.
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    tags=["tierflow"],
    doc_md=__doc__,
) as dag:
    ingest = BashOperator(
        task_id="ingest",
        bash_command=tierflow("ingest", SOURCE, "--format", "jsonl", "--config", CONFIG, "--json"),
        execution_timeout=timedelta(hours=2),
    )
    lifecycle = BashOperator(
        task_id="lifecycle",
        bash_command=tierflow("lifecycle", "run", "--config", CONFIG, "--json"),
        execution_timeout=timedelta(hours=3),
    )
    evaluate = BashOperator(
        task_id="eval_gate",
        bash_command=tierflow(
            "eval",
            "run",
            SUITE,
            "--out",
            f"{WORKDIR}/eval/{{{{ ds }}}}",
            "--cache",
            f"{WORKDIR}/eval-cache",
        ),
        cwd=REPO,
        # A failed gate is a finding, not a flake: do not retry it.
        retries=0,
        execution_timeout=timedelta(hours=1),
    )

    ingest >> lifecycle >> evaluate
