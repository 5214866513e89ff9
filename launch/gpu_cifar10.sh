#!/usr/bin/env bash
# The CIFAR-10 conv5 experiment of docs/evaluation.md in one call on an accelerator host:
#   launch/gpu_cifar10.sh OUTDIR [TRAIN_SECONDS]
# 1. imports CIFAR-10 from ../shared/data into $DCJAX_DATA_DIR (or ~/tensorflow_datasets);
# 2. trains configs/cifar10.py (full width) with lr 0.025 (the paper's rate per image at batch 128)
#    into OUTDIR/run for its num_epochs or until TRAIN_SECONDS (default 300) have passed: SIGTERM
#    then checkpoints, and the same command resumes from there;
# 3. the paper's linear probe ('augmented') and the reference's ('translate') on the trained and the
#    random-init network, kNN and k-means, then the tables (OUTDIR/table*.md).
# EXTRA="--config.num_epochs=60 ..." adds overrides to every command; DRY_RUN=1 prints the commands.
set -uo pipefail
out=${1:?usage: launch/gpu_cifar10.sh OUTDIR [TRAIN_SECONDS]}
train_seconds=${2:-300}
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
threads=$(nproc 2>/dev/null || echo 2)
run=$out/run
# shellcheck disable=SC2206
extra=(${EXTRA:-})
common=("--config.data.num_threads=$threads" "${extra[@]}")
train=("$python" -m dcjax.main --config=configs/cifar10.py "--workdir=$run"
       --config.optim.lr=0.025 --config.optim.head_lr=0.025 "${common[@]}")
evals=()
for views in augmented translate; do
  for init in trained random; do
    evals+=("--protocol=linear --config.eval.linear_views=$views --init=$init")
  done
done
for protocol in knn clustering; do
  for init in trained random; do
    evals+=("--protocol=$protocol --init=$init")
  done
done

step() {  # prints the command (DRY_RUN=1) or runs it, its output appended to OUTDIR/log.txt
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@"; echo
    return 0
  fi
  echo "== $*" | tee -a "$out/log.txt"
  PYTHONUNBUFFERED=1 "$@" 2>&1 | tee -a "$out/log.txt"
  return "${PIPESTATUS[0]}"
}

[ "${DRY_RUN:-0}" = 1 ] || mkdir -p "$out"
status=0
# An already imported dataset makes this exit non-zero with "already exists"; training then uses it
# (and stops with a one-line error if there is none).
step "$python" -m dcjax.data.prepare --source=../shared/data/cifar10-jpg.tar.gz --name=cifar10_jpg
step timeout -s TERM "$train_seconds" "${train[@]}"
rc=$?
# 124: the time limit's SIGTERM, after which the run has checkpointed; anything else non-zero failed.
if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then
  echo "training failed (exit $rc)" >&2
  exit 1
fi
for args in "${evals[@]}"; do
  # shellcheck disable=SC2086
  step "$python" -m dcjax.evaluate "--workdir=$run" $args "${common[@]}" || status=1
done
for views in augmented translate; do
  if [ "${DRY_RUN:-0}" = 1 ]; then
    step "$python" -m dcjax.evaluate.table "--workdir=$run" "--linear_views=$views"
  else
    "$python" -m dcjax.evaluate.table "--workdir=$run" "--linear_views=$views" \
      > "$out/table_$views.md" || status=1
    cat "$out/table_$views.md"
  fi
done
[ "${DRY_RUN:-0}" = 1 ] || cp "$run/metrics.jsonl" "$run/config.json" "$out/" 2>/dev/null
exit $status
