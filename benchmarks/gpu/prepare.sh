#!/usr/bin/env bash
# Run on a machine WITH network, in the repository root: fetches every wheel the GPU run needs into
# .gpu-wheels/ (git-ignored) and splits the big ones into parts small enough to carry to a GPU machine
# that has no network (64 MiB per transfer there). benchmarks/gpu/run.sh joins and installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."
ORT_GPU=${ORT_GPU:-onnxruntime-gpu==1.31.0}   # built for CUDA 13, which the GPU image's torch carries
PY=${PY:-.venv/bin/python}
out=.gpu-wheels
rm -rf "$out" && mkdir -p "$out/parts"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 -d "$out" "$ORT_GPU"
# diffusers and our own package are pure Python; the GPU image already has torch, transformers, numpy.
"$PY" -m pip download --no-deps -d "$out" "diffusers==0.42.1" tokenizers safetensors
"$PY" -m pip wheel --no-deps -w "$out" .
for wheel in "$out"/*.whl; do
  if [ "$(stat -c %s "$wheel")" -gt $((60 * 1024 * 1024)) ]; then
    split -b 60M -d -a 2 "$wheel" "$out/parts/$(basename "$wheel")."
    rm "$wheel"
  fi
done
(cd "$out" && find . -type f | sort | xargs sha256sum > SHA256SUMS)
ls -la "$out" "$out/parts"
