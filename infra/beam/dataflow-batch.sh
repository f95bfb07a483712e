#!/usr/bin/env bash
# The batch pipeline on Google Cloud Dataflow: `tierflow ingest` passes every option it does not know to
# Beam, so this is the same command as a local run plus DataflowRunner options.
#
#   SOURCE=s3://tierflow-docs/incoming/ PROJECT=my-project REGION=europe-west4 TEMP_LOCATION=gs://my-bucket/tmp \
#   SDK_CONTAINER_IMAGE=europe-west4-docker.pkg.dev/my-project/tierflow/beam-worker:0.1.0 \
#   bash infra/beam/dataflow-batch.sh
#
# What it needs:
# - apache-beam[gcp] on the launching machine, and Google credentials (gcloud auth application-default).
# - SDK_CONTAINER_IMAGE: a worker image built on apache/beam_python3.11_sdk with tierflow and the
#   embedding model package installed (custom containers run on Dataflow Runner v2: use_runner_v2).
# - LIMITATION: the pipeline writes hot-tier segments and commits them with local file I/O under
#   index_dir, which the launcher reads back at the end. Dataflow workers share no filesystem with each
#   other or with the launcher, so a run only completes when index_dir is on a filesystem that every
#   worker and the launcher mount at the same path; stock Dataflow workers have none. Until tierflow
#   writes segments to object storage, use Flink/Dask on the index's node (flink-batch.sh) for
#   production ingest, and Dataflow only with a worker image that mounts such a filesystem.
# - SOURCE: tierflow reads local paths and s3:// prefixes, not gs://. For a GCS bucket, use its
#   S3-compatible XML API: SOURCE=s3://bucket/prefix with --s3-endpoint-url=https://storage.googleapis.com
#   and HMAC keys as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY on the workers.
# - ACCELERATOR (optional) embeds on GPUs, e.g. ACCELERATOR="type:nvidia-l4;count:1;install-nvidia-driver"
#   with MACHINE_TYPE=g2-standard-8 and an image with CUDA builds of torch.
# Extra arguments are passed on; Beam options must be written --name=value.
set -euo pipefail

: "${SOURCE:?set SOURCE to the files to ingest: an s3:// prefix the workers can read}"
: "${PROJECT:?set PROJECT to the Google Cloud project}"
: "${REGION:?set REGION to the Dataflow region, e.g. europe-west4}"
: "${TEMP_LOCATION:?set TEMP_LOCATION to a gs:// path for Dataflow temporary files}"
: "${SDK_CONTAINER_IMAGE:?set SDK_CONTAINER_IMAGE to a Beam worker image with tierflow installed}"
TIERFLOW=${TIERFLOW:-tierflow}
CONFIG=${CONFIG:-/etc/tierflow/tierflow.toml}
FORMAT=${FORMAT:-jsonl}
MACHINE_TYPE=${MACHINE_TYPE:-n2-standard-8}
MAX_WORKERS=${MAX_WORKERS:-10}
JOB_NAME=${JOB_NAME:-tierflow-ingest-$(date -u +%Y%m%d-%H%M%S)}

runner_args=(
  --runner=DataflowRunner
  "--project=$PROJECT"
  "--region=$REGION"
  "--temp_location=$TEMP_LOCATION"
  "--staging_location=$TEMP_LOCATION/staging"
  "--job_name=$JOB_NAME"
  "--worker_machine_type=$MACHINE_TYPE"
  "--max_num_workers=$MAX_WORKERS"
  "--sdk_container_image=$SDK_CONTAINER_IMAGE"
  --experiments=use_runner_v2
  # One SDK process per worker VM: the embedding model is loaded once and uses every core (or the GPU).
  --experiments=no_use_multiple_sdk_containers
)
if [ -n "${ACCELERATOR:-}" ]; then
  runner_args+=("--dataflow_service_options=worker_accelerator=$ACCELERATOR")
fi

exec "$TIERFLOW" ingest "$SOURCE" --format "$FORMAT" --config "$CONFIG" --json "${runner_args[@]}" "$@"
