#!/usr/bin/env bash
# A throwaway virtualenv with Apache Airflow, to import infra/airflow/tierflow_dag.py with the real
# DagBag (tests/test_infra.py does when it finds one; without it the test imports the DAG against
# stand-ins for the two Airflow classes it uses). Airflow is kept out of the project's own .venv: its
# dependency tree is large and pins what tierflow uses. Airflow's official constraints files are not on
# PyPI, so the two packages are pinned here and pip resolves the rest (about a minute).
#   bash infra/airflow/airflow-venv.sh            # creates /tmp/airflow-venv
#   TIERFLOW_AIRFLOW_PYTHON=/tmp/airflow-venv/bin/python .venv/bin/python -m pytest tests/test_infra.py
set -euo pipefail
VENV=${AIRFLOW_VENV:-/tmp/airflow-venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --disable-pip-version-check -q \
  "apache-airflow==3.3.2" "apache-airflow-providers-standard==1.21.0"
echo "airflow-venv: $("$VENV/bin/python" -c 'import airflow; print("Apache Airflow", airflow.__version__)') in $VENV" >&2
