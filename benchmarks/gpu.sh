#!/usr/bin/env bash
# The benchmark suite (benchmarks/run.py) on one CUDA device, in one call of a few minutes.
#
#   benchmarks/gpu.sh [more run.py arguments, e.g. --only backends hf]
#
# Full sizes (attention T = 128..2048, every gate variant, 128 new tokens) under a time budget,
# BUDGET seconds (default 420): work that no longer fits, compilations of the non-headline
# variants first, is skipped and listed in the summary. Appends to benchmarks/RESULTS.md.
# PYTHON overrides the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

"$PYTHON" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(
        f"benchmarks/gpu.sh: torch {torch.__version__} sees no CUDA device "
        f"(built for CUDA {torch.version.cuda}); run benchmarks/run.py for the CPU suite"
    )
print(f"CUDA device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PY

exec "$PYTHON" benchmarks/run.py --device cuda --budget "${BUDGET:-420}" "$@"
