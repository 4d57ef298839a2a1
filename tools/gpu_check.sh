#!/bin/bash
# One-GPU check (< 5 min): stage 1.5 with ZeRO-3 + bf16 at 576 visual tokens; see tools/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" tools/gpu_check.py "$@"
