#!/usr/bin/env bash
# Build benchmarks/.venv-trl: TRL 0.23.1 (the last release with IterativeSFTTrainer) on transformers 4.x, for
# bench_training.py. torch is installed first and pinned, so pip never resolves another torch into it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${TRL_VENV:-$here/.venv-trl}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet torch==2.13.0
# The constraint keeps torch at the version just installed while trl and transformers resolve.
echo "torch==2.13.0" > "$venv/torch-pin.txt"
"$venv/bin/python" -m pip install --quiet -c "$venv/torch-pin.txt" trl==0.23.1 'transformers<5' 'accelerate<2' datasets
"$venv/bin/python" -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'trl', trl.__version__)"
