#!/usr/bin/env bash
# Download, on a machine with PyPI, the wheels gpu.sh installs on a GPU machine that has no package index:
#   benchmarks/.venv-gpu-wheels/itersft/  what itersft needs beyond a CUDA image with torch, transformers 5 and
#                                        accelerate (datasets and its two pure-Python dependencies)
#   benchmarks/.venv-gpu-wheels/trl/      TRL 0.23.1 with the transformers 4.x stack it needs, installed by gpu.sh
#                                        into its own folder so the image's transformers 5 stays untouched
# The versions are those of benchmarks/.venv-trl (setup_trl_venv.sh), for CPython 3.12 on x86-64 Linux (the GPU
# image's python; override with PYTHON_VERSION=3.11). About 20 MB; the folder is git-ignored (benchmarks/.venv*/).
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/.venv-gpu-wheels"
version="${PYTHON_VERSION:-3.12}"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {  # folder, then requirements
  local folder="$1"; shift
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    "${platforms[@]}" -d "$out/$folder" "$@"
}
rm -rf "$out"
download itersft datasets==5.0.1 dill==0.4.1 multiprocess==0.70.19
download trl trl==0.23.1 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 datasets==5.0.1 \
  dill==0.4.1 multiprocess==0.70.19
du -sh "$out"/*
