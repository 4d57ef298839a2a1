import pytest
"""tools/gpu_check.py's CPU path: the same script a person runs on one GPU, tiny sizes, fp32 ZeRO-3."""
import os
import re
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # multi-process / full-pipeline: `pytest -m "not slow"` leaves it out

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_gpu_check_cpu_path_prints_one_passing_row(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--device", "cpu", "--work",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("attention kernel"))
    row = lines[start + 1].split()
    assert row[:3] == ["sdpa", "bidirectional-visual", "ZeRO-3"]
    assert float(row[3]) > 0 and row[-3:] == ["yes", "equal", "ok"]  # on the device, reload equal
    assert re.search(r"stage 1\.5, 3 steps, batch 2, 16 visual tokens", proc.stdout)
    assert lines[-1] == "gpu_check: all rows ok"

