#!/usr/bin/env bash
# One GPU session in under 8 minutes: report missing Python packages, run the CUDA correctness tests
# (bf16/fp16/fp32 kernels vs fp64 and torch SDPA / F.cross_entropy, TRITON_INTERPRET unset), then every
# kernel benchmark (bench/bench_kernels.py), and write everything to one summary file.
#   bash bench/gpu.sh            # -> $OUT/gpu_summary.txt, or ./gpu_out/gpu_summary.txt when OUT is unset
# Each step has its own time limit, so a hang in one still leaves the others' results in the summary.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-./gpu_out}
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/gpu_summary.txt"
export TRITON_INTERPRET=0  # tests/conftest.py only sets it when unset: the CUDA tests need real compiles
export PYTHONUNBUFFERED=1

{
  echo "== gpu.sh at $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
  python -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| triton', triton.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.is_available())"

  echo; echo "== packages"
  python - <<'PY'
import importlib.util
wanted = ["tokenizers", "safetensors", "numpy", "requests", "tqdm", "pytest"]
missing = [p for p in wanted if importlib.util.find_spec(p) is None]
print("missing:", " ".join(missing) if missing else "none",
      "(pytest: the tests below; safetensors: model.py, so the model benchmark)" if missing else "")
PY

  echo; echo "== CUDA tests"
  if python -c "import pytest" 2>/dev/null; then
    start=$(date +%s)
    timeout 300 python -m pytest -q -rs -k cuda tests/test_attention.py tests/test_decode.py tests/test_logprobs.py
    echo "(tests: exit $?, $(( $(date +%s) - start )) s)"
  else
    echo "skipped: pytest is not installed (see the packages line)"
  fi

  echo; echo "== benchmarks"
  start=$(date +%s)
  timeout 300 python bench/bench_kernels.py
  echo "(benchmarks: exit $?, $(( $(date +%s) - start )) s)"
} 2>&1 | tee "$SUMMARY"
echo "summary: $SUMMARY"
