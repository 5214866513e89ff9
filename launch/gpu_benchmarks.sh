#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md from one device call, in priority order, each part under its
# own time cap and writing its table into OUTDIR as it goes (a part cut off keeps what it printed):
#   launch/gpu_benchmarks.sh OUTDIR [kmeans imagenette_epoch models imagenet_epoch]
#
#   kmeans            dcjax's k-means (highest, bf16_3x, exact_fast) beside a PyTorch k-means on the
#                     same device (faiss' flat-GPU algorithm: no faiss GPU wheel fits a call), same
#                     data and initial centroids, 1,281,167 x 256 at k = 10,000 and 100,000 x 256 at
#                     k = 1,000, 20 iterations: kmeans.txt, kmeans.json
#   imagenette_epoch  DeepCluster epochs on Imagenette at 224 px (AlexNet-BN, grain worker processes
#                     on the host's cores, crop-only JPEG decode, view cache in device memory), per
#                     phase: imagenette_epoch.txt, imagenette_metrics.jsonl
#   models            the AlexNet-BN train step, float32 and bfloat16, against PyTorch: models.txt
#   imagenet_epoch    train step and extraction on device-resident inputs (what the epoch above is
#                     compared with), PCA 1,281,167 x 4096 -> 256, the projected ImageNet epoch:
#                     imagenet_epoch.txt, imagenet_epoch.json
# plus env.txt (machine, versions). At most 8 files in OUTDIR (what a device call brings back).
#
# Environment:
#   BUNDLE=DIR   what launch/gpu_bundle.sh made (wheels, the prepared Imagenette train split, the
#                crop decoder): installed into /tmp/dcjax-site first, for a machine without them.
#   TINY=1       the same parts at toy sizes (a CPU check that every command runs; CI does this),
#                each capped at CAP_TINY seconds (600).
#   DRY_RUN=1    print the commands instead of running them.
#   CAP_<part>=S seconds for a part (defaults below sum to 520 s, under the 9 minutes of a call).
#   IMAGENETTE=F the Imagenette tarball to import when the data dir lacks it
#                (default ../shared/data/imagenette-128.tar.gz).
set -uo pipefail
out=${1:?usage: launch/gpu_benchmarks.sh OUTDIR [kmeans imagenette_epoch models imagenet_epoch]}
shift
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(kmeans imagenette_epoch models imagenet_epoch)
tiny=${TINY:-0}
dry=${DRY_RUN:-0}
for part in "${parts[@]}"; do
  case $part in kmeans|imagenette_epoch|models|imagenet_epoch) ;;
    *) echo "unknown benchmark: $part (kmeans, imagenette_epoch, models, imagenet_epoch)" >&2; exit 2 ;;
  esac
done

run() {  # run CMD... (or print it)
  if [ "$dry" = 1 ]; then printf '%q ' "$@"; echo; return 0; fi
  "$@"
}

if [ -n "${BUNDLE:-}" ] && [ "$dry" != 1 ]; then
  # Wheels into a private folder ahead of the machine's packages; protobuf only where the
  # machine's is too old for the carried TFDS metadata protos.
  site=/tmp/dcjax-site
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$BUNDLE"/whl/*.whl || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$python" -c "from tensorflow_metadata.proto.v0 import schema_pb2; import grain" 2>/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$BUNDLE"/whl/opt/*.whl || exit 1
  fi
  # The crop decoder built elsewhere (libjpeg beside it), found where dcjax looks first.
  mkdir -p /tmp/dcjax-cache && cp "$BUNDLE"/cache/* /tmp/dcjax-cache/
  export DCJAX_CACHE_DIR=/tmp/dcjax-cache
  [ -d "$BUNDLE/tfds" ] && export DCJAX_DATA_DIR="$BUNDLE/tfds"
fi

mkdir -p "$out"
if [ "$dry" != 1 ]; then
  {
    date -u; uname -a; nproc; free -g | head -2
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
    "$python" -c "import sys, jax, flax, optax, numpy; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__); print(jax.devices())"
    "$python" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))" 2>&1 | tail -1
    "$python" -c "import importlib.metadata as m, grain, tensorflow_datasets, cv2; print('grain', m.version('grain'), 'tfds', m.version('tensorflow-datasets'), 'cv2', cv2.__version__)" 2>&1 | tail -1
    "$python" -c "from dcjax.data import jpeg_region; print('crop decoder:', jpeg_region.library() is not None)" 2>&1 | tail -1
  } > "$out/env.txt" 2>&1
  cat "$out/env.txt"
fi

status=0
for part in "${parts[@]}"; do
  workdir=${TMPDIR:-/tmp}/dcjax-gpu-imagenette
  case $part in
    kmeans)
      cap=${CAP_kmeans:-170}
      if [ "$tiny" = 1 ]; then sizes=20000x64x100x3,4000x32x50x3; else
        sizes=1281167x256x10000x20,100000x256x1000x20; fi
      cmd=(-m dcjax.bench.kmeans "--sizes=$sizes" --backends=jax,torch
           --precisions=highest,bf16_3x,exact_fast --torch_precisions=float32,tf32 --pca=
           --timeout=75 "--json=$out/kmeans.json") ;;
    imagenette_epoch)
      cap=${CAP_imagenette_epoch:-150}
      # The data: the data dir's imagenette128, else imported from the tarball.
      if [ "$dry" != 1 ] && ! DCJAX_DATA_DIR=${DCJAX_DATA_DIR:-} "$python" -c \
          "from dcjax.data.datasets import open_split; open_split('imagenette128', 'train')" \
          >/dev/null 2>&1; then
        run "$python" -m dcjax.data.prepare "--source=${IMAGENETTE:-../shared/data/imagenette-128.tar.gz}" \
          --name=imagenette128 >/dev/null || status=1
      fi
      rm -rf "$workdir"
      config=configs/imagenette.py:$([ "$tiny" = 1 ] && echo smoke || echo alexnet224)
      cmd=(-m dcjax.main "--config=$config" "--workdir=$workdir"
           --config.num_epochs=4 --config.data.decoder=opencv --config.data.view_cache=device
           --config.data.num_workers=12 --config.data.num_threads=2 --config.clustering.backend=jax
           --config.checkpoint_every_steps=0 --config.visualize_every_epochs=0)
      if [ "$tiny" = 1 ]; then
        cmd+=(--config.num_epochs=2 --config.data.num_workers=2 --config.data.image_size=32
              --config.data.resize_size=36)
      fi ;;
    models)
      cap=${CAP_models:-80}
      # JAX shares the GPU with the PyTorch reference in this process: half the memory each.
      cmd=(-m dcjax.bench.models --skip_pipeline --models=alexnet --dtypes=float32,bfloat16)
      if [ "$tiny" = 1 ]; then cmd+=(--batch_224=2 --steps=1); else cmd+=(--batch_224=256 --steps=20); fi ;;
    imagenet_epoch)
      cap=${CAP_imagenet_epoch:-120}
      cmd=(-m dcjax.bench.imagenet_epoch --kmeans_precisions=bf16_3x --kmeans_chunks=32768
           "--json=$out/imagenet_epoch.json")
      if [ "$tiny" = 1 ]; then
        cmd+=(--batch=8 --steps=1 --cluster_rows=4096 --k=64 --model=alexnet_small --image_size=32
              --kmeans_precisions=highest)
      fi ;;
  esac
  # The caps are the device's; a CPU check at toy sizes gets room for a loaded CI machine.
  [ "$tiny" = 1 ] && cap=${CAP_TINY:-600}
  if [ "$dry" = 1 ]; then
    printf 'timeout -s TERM %s ' "$cap"; run "$python" "${cmd[@]}"
    continue
  fi
  echo "== $part (at most $cap s)"
  start=$SECONDS
  XLA_PYTHON_CLIENT_MEM_FRACTION=$([ "$part" = models ] && echo 0.45 || echo 0.75) \
    PYTHONUNBUFFERED=1 timeout -s TERM -k 15 "$cap" "$python" "${cmd[@]}" 2>&1 \
    | grep -v -e "^WARNING: All log messages" -e "^I0000" | tee "$out/$part.txt"
  rc=${PIPESTATUS[0]}
  echo "== $part: exit $rc after $((SECONDS - start)) s" | tee -a "$out/$part.txt"
  [ "$rc" -eq 0 ] || status=1
  if [ "$part" = imagenette_epoch ] && [ -f "$workdir/metrics.jsonl" ]; then
    cp "$workdir/metrics.jsonl" "$out/imagenette_metrics.jsonl"
  fi
done
exit $status
