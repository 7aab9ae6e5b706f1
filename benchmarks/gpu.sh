#!/usr/bin/env bash
# Training at scale on one CUDA device, in one call of at most 8 minutes:
#
#   benchmarks/gpu.sh            # on a CUDA machine; appends the tables to benchmarks/RESULTS.md
#   benchmarks/gpu.sh --tiny     # the same code on the CPU at dry-run size (seconds; not saved)
#
# Prints, for the gpu-125m config (configs/gpu-125m.toml: bf16 autocast, compiled):
#   - training tokens/s and MFU of the baseline, elementwise and headwise G1 (the bf16 peak is
#     measured by a matmul in the same run), eager and compiled;
#   - the gates' step-time overhead over the baseline;
#   - peak memory per step (CUDA allocator);
#   - the baseline against transformers' Qwen3ForCausalLM with the same weights;
# then the LM head + loss memory (plain vs chunked, vocabulary 151,669 x 8k tokens) and the
# training-step memory of the gates (benchmarks/run.py sections scale, loss, memory). Work that
# no longer fits in BUDGET seconds (default 360; compilations first) is skipped and listed;
# the tables print as each section ends, and the whole call stops at 8 minutes.
# More run.py arguments pass through (e.g. --only scale). PYTHON overrides the interpreter
# (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [[ "${1:-}" == "--tiny" ]]; then
  shift
  exec "$PYTHON" benchmarks/run.py --device cpu --tiny --quick --no-save \
    --only scale loss memory "$@"
fi

"$PYTHON" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(
        f"benchmarks/gpu.sh: torch {torch.__version__} sees no CUDA device "
        f"(built for CUDA {torch.version.cuda}); run benchmarks/gpu.sh --tiny to check the "
        "script on the CPU, or benchmarks/run.py for the CPU suite"
    )
print(f"CUDA device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PY

exec timeout 480 "$PYTHON" benchmarks/run.py --device cuda --quick --budget "${BUDGET:-360}" \
  --only scale loss memory "$@"
