#!/usr/bin/env bash
# DeepCluster on a Cloud TPU VM pod slice: the same command on every worker, one JAX process each.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh setup          # clone + install, all workers
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh run CONFIG WORKDIR [--config.x=y ...]
#   DRY_RUN=1 TPU_NAME=... ZONE=... launch/tpu_pod.sh run CONFIG WORKDIR   # print, run nothing
#
# jax.distributed.initialize() detects the pod's workers itself (TPU_WORKER_HOSTNAMES). WORKDIR and
# the data dir (DCJAX_DATA_DIR) must be a filesystem every worker mounts at the same path (e.g. a
# Filestore NFS share or a gcsfuse mount of a bucket): checkpoints are written collectively and
# process 0 writes metrics and plots. REPO (default: this repository's origin URL) and REF (default
# main) say what `setup` installs; PROJECT_DIR (default ~/dcjax) where.
set -euo pipefail
action=${1:?usage: launch/tpu_pod.sh setup | run CONFIG WORKDIR [--config.x=y ...]}
shift
tpu=${TPU_NAME:?set TPU_NAME}
zone=${ZONE:?set ZONE}
dir=${PROJECT_DIR:-\~/dcjax}
data_dir=${DCJAX_DATA_DIR:-\~/tensorflow_datasets}
case "$action" in
  setup)
    repo=${REPO:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || echo REPO-URL)}
    remote="git clone $repo $dir 2>/dev/null || git -C $dir fetch; git -C $dir checkout ${REF:-main}"
    remote+=" && cd $dir && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt"
    remote+=" && .venv/bin/pip install -q -e '.[tpu]'"
    ;;
  run)
    config=${1:?usage: launch/tpu_pod.sh run CONFIG WORKDIR [--config.x=y ...]}
    workdir=${2:?usage: launch/tpu_pod.sh run CONFIG WORKDIR [--config.x=y ...]}
    shift 2
    extra=$(printf ' %q' "$@")
    remote="cd $dir && DCJAX_DATA_DIR=$data_dir .venv/bin/python -m dcjax.main"
    remote+=" --config=$config --workdir=$workdir$extra"
    ;;
  *)
    echo "error: unknown action '$action' (setup or run)" >&2; exit 2 ;;
esac
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
