#!/usr/bin/env bash
# The benchmarks that docs/benchmarks.md and docs/scaling.md report for a GPU machine, in priority
# order, each printing its table into OUTDIR/<name>.txt (and JSON where the benchmark writes one).
#   launch/gpu_benchmarks.sh OUTDIR [imagenet_epoch models kmeans]
# Needs jax with CUDA, flax, optax, ml_collections, absl; PyTorch for the reference train step and
# faiss-cpu for the reference k-means (their rows say "not installed" / "failed" otherwise).
# DRY_RUN=1 prints the commands instead of running them.
set -uo pipefail
out=${1:?usage: launch/gpu_benchmarks.sh OUTDIR [imagenet_epoch models kmeans]}
shift
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(imagenet_epoch models kmeans)
mkdir -p "$out"
status=0
for part in "${parts[@]}"; do
  case $part in
    imagenet_epoch) cmd=(-m dcjax.bench.imagenet_epoch "--json=$out/imagenet_epoch.json") ;;
    # JAX shares the GPU with the PyTorch reference in this process: half the memory each.
    models) cmd=(-m dcjax.bench.models --skip_pipeline --models=alexnet --batch_224=256
                 --dtypes=float32,bfloat16 --steps=20) ;;
    # The ImageNet-scale k-means (20 iterations, JAX alone), the same problem for 2 iterations
    # beside faiss-cpu on the host's cores, and PCA-whitening beside faiss PCAMatrix.
    kmeans) cmd=(-m dcjax.bench.kmeans --sizes=1281167x256x10000x20,1281167x256x10000x2
                 --backends=jax,faiss --faiss_max_iters=2 --pca=100000x4096x256
                 "--json=$out/kmeans.json") ;;
    *) echo "unknown benchmark: $part (imagenet_epoch, models, kmeans)" >&2; exit 2 ;;
  esac
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$python" "${cmd[@]}"; echo
    continue
  fi
  echo "== $part"
  XLA_PYTHON_CLIENT_MEM_FRACTION=$([ "$part" = models ] && echo 0.5 || echo 0.75) \
    PYTHONUNBUFFERED=1 "$python" "${cmd[@]}" 2>&1 | tee "$out/$part.txt" || status=1
done
exit $status
