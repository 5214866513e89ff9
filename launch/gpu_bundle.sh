#!/usr/bin/env bash
# Makes BUNDLE (default .gpu, git-ignored) for launch/gpu_benchmarks.sh on a machine that has jax,
# PyTorch and OpenCV but not dcjax's data stack and cannot reach a registry (the lent device
# machine): BUNDLE/whl (the wheels that machine lacks, for its Python, default 3.12; protobuf apart
# in whl/opt), BUNDLE/tfds (the Imagenette training split, imported), BUNDLE/cache (the crop-only
# JPEG decoder compiled here, with this machine's libjpeg beside it). About 52 MB: it fits one call
# with the working tree (64 MiB).
#   launch/gpu_bundle.sh [BUNDLE]      then, on the device:  BUNDLE=.gpu launch/gpu_benchmarks.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-.gpu}
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
pyver=${PY_VERSION:-3.12}
mkdir -p "$bundle/whl/opt" "$bundle/cache"
get() {  # get DEST NAME==VERSION...
  local dest=$1; shift
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest" "$@"
}
pin() { grep -i "^$1==" requirements.txt; }
# The data stack (pinned as requirements.txt pins it) and what it needs beyond the device image.
for p in tensorflow-datasets grain array_record ml_collections simplejpeg tensorboardX \
         importlib_resources; do get "$bundle/whl" "$(pin "$p")"; done
get "$bundle/whl" dm-tree immutabledict simple_parsing docstring-parser tensorflow-metadata \
  termcolor toml portpicker googleapis-common-protos
"$python" -m pip wheel -q --no-deps -w "$bundle/whl" promise  # an sdist only
get "$bundle/whl/opt" "protobuf==$("$python" -c 'import google.protobuf as p; print(p.__version__)')"
# The crop decoder, linked against a copy of this machine's libjpeg found beside it ($ORIGIN).
hash=$("$python" -c "import hashlib; print(hashlib.sha256(open('dcjax/data/jpeg_region.c', 'rb').read()).hexdigest()[:16])")
libjpeg=$(ldconfig -p | awk '/libjpeg\.so\.62 .*x86-64/ {print $NF; exit}')
cp -L "$libjpeg" "$bundle/cache/libjpeg.so.62"
${CC:-gcc} -O2 -shared -fPIC -Wl,-rpath,'$ORIGIN' -o "$bundle/cache/jpeg_region-$hash.so" \
  dcjax/data/jpeg_region.c -L"$bundle/cache" -l:libjpeg.so.62
# The Imagenette training split (the epoch benchmark's data), imported here.
src=$(mktemp -d)
tar xzf "${IMAGENETTE:-../shared/data/imagenette-128.tar.gz}" -C "$src" imagenette-128/train
"$python" -m dcjax.data.prepare "--source=$src/imagenette-128" --name=imagenette128 \
  "--data_dir=$bundle/tfds" --overwrite >/dev/null
rm -rf "$src" "$bundle/tfds/downloads"
du -sh "$bundle"
