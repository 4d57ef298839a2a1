"""The main job end to end at smoke size: report, figures, results; a re-run reuses every stage."""
import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cmd = [sys.executable, "-m", "victor.cli", "demo", "--preset", "smoke", "--output", str(out), "--precision", "fp32",
           "--ablate", "matching=nearest"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return out, cmd, first


def test_report_has_table_figures_and_results(demo_run):
    out, _, _ = demo_run
    report = (out / "report.md").read_text()
    for arm in ("baseline", "victor", "victor[matching=nearest]"):
        assert f"| {arm} |" in report
    for fig in ("training_curves", "pool_utilisation", "accuracy_per_type", "masked_patches"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
        assert f"figures/{fig}.png" in report
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"baseline/seed0", "victor/seed0", "victor[matching=nearest]/seed0"}
    for metrics in results.values():
        assert set(metrics) == {"mmbench", "pope", "gqa"}
        assert 0.0 <= metrics["pope"]["accuracy"] <= 1.0
    # both stage-1.5 arms started from the same stage-1 checkpoint
    stages = {p.name.rsplit("-", 1)[0]: p for p in (out / "stages").iterdir()}
    inits = {json.loads((stages[f"stage1_5-{a}-s0"] / "victor_stage.json").read_text())["model"]["init_from"]
             for a in ("baseline", "victor")}
    assert len(inits) == 1
    baseline = json.loads((stages["stage1_5-baseline-s0"] / "victor_stage.json").read_text())
    assert baseline["comprehension"] is False and baseline["trainable_parameters"]["pool"] == 0


def test_rerun_reuses_finished_stages(demo_run):
    out, cmd, _ = demo_run
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0
    assert again.stdout.count("reusing") == 7  # stage 1 + 3 arms x (stage 1.5 + stage 2)
    assert "training ->" not in again.stdout
