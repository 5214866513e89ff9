#!/usr/bin/env bash
# Run DeepCluster on this machine, all its local devices (CPU, or every GPU JAX sees).
#   launch/local.sh configs/cifar10.py runs/cifar10 [--config.clustering.k=300 ...]
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [--config.x=y ...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [--config.x=y ...]}
shift 2
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
cmd=("$python" -m dcjax.main "--config=$config" "--workdir=$workdir" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
