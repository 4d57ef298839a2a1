"""The main job end to end at smoke size, 2 seeds: report, figures, results, controls and verdicts;
report.md prints exactly the numbers of results.json; a re-run reuses every stage and evaluation."""
import json
import subprocess
import sys

import pytest

from victor.demo.evidence import MEASURES
from victor.demo.report import format_comparison, format_t, pm

pytestmark = pytest.mark.slow  # multi-process / full-pipeline: `pytest -m "not slow"` leaves it out

ARMS = ("baseline", "victor", "baseline[seed+100]", "baseline[stage 2 x0.25]", "baseline[stage 2 x0.5]",
        "victor[matching=nearest]")
VERDICTS = {"better", "worse", "no difference resolved"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cmd = [sys.executable, "-m", "victor.cli", "demo", "--preset", "smoke", "--output", str(out), "--precision", "fp32",
           "--seeds", "2", "--ablate", "matching=nearest"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return out, cmd, first


def test_report_has_table_figures_and_results(demo_run):
    out, _, _ = demo_run
    report = (out / "report.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in report
    for fig in ("training_curves", "pool_utilisation", "accuracy_per_type", "masked_patches", "probe_per_layer"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
        assert f"figures/{fig}.png" in report
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {f"{arm}/seed{s}" for arm in ARMS for s in (0, 1)}
    for metrics in results["runs"].values():
        assert set(metrics) == {"mmbench", "pope", "gqa", "gqa_fine"}
        assert 0.0 <= metrics["pope"]["accuracy"] <= 1.0 and 0.0 <= metrics["gqa_fine"]["accuracy"] <= 1.0
        assert "gold_mean_loglik" in metrics["gqa"] and "accuracy" in metrics["gqa"]
    # every arm started from the same stage-1 checkpoint; seed s of both arms shares its seed
    stages = {p.name.rsplit("-", 1)[0]: p for p in (out / "stages").iterdir()}
    records = {(a, s): json.loads((stages[f"stage1_5-{a}-s{s}"] / "victor_stage.json").read_text())
               for a in ("baseline", "victor") for s in (0, 1)}
    assert len({r["model"]["init_from"] for r in records.values()}) == 1
    assert records["baseline", 1]["log_history"] != records["baseline", 0]["log_history"]
    baseline = records["baseline", 0]
    assert baseline["comprehension"] is False and baseline["trainable_parameters"]["pool"] == 0
    # the negative control differs only in seed; the dose ladder has 1/4 and 1/2 of the baseline's stage 2
    neg = json.loads((stages["stage2-baseline[seed+100]-s0"] / "victor_stage.json").read_text())
    half = json.loads((stages["stage2-baseline[stage 2 x0.5]-s0"] / "victor_stage.json").read_text())
    quarter = json.loads((stages["stage2-baseline[stage 2 x0.25]-s0"] / "victor_stage.json").read_text())
    base = json.loads((stages["stage2-baseline-s0"] / "victor_stage.json").read_text())
    assert half["model"]["init_from"] == quarter["model"]["init_from"] == base["model"]["init_from"] == \
        str(stages["stage1_5-baseline-s0"])
    assert 2 * half["steps_run"] == 4 * quarter["steps_run"] == base["steps_run"]
    assert "stage1_5-baseline[seed+100]-s0" in neg["model"]["init_from"]


def test_report_prints_the_numbers_of_results_json(demo_run):
    out, _, _ = demo_run
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    rows = results["comparisons"] + results["probe_comparisons"] + results["recon_comparisons"]
    assert rows
    for row in rows:
        assert row["verdict"] in VERDICTS
        line = f"| {row['comparison']} | {row['measure']} ({row['unit']}) | {format_comparison(row)} | {format_t(row)} |"
        assert line in report and row["verdict"] in (row["verdict_bootstrap"], "no difference resolved")
    for arm, values in results["headline"].items():
        assert f"| {arm} |" in report and pm(values["mmbench"]) in report and pm(values["pope"]) in report
    for key, values in results["probe"].items():
        assert f"| {key} | {pm(values['occupancy'])} | {pm(values['colour'])} | {pm(values['shape'])} | {pm(values['size'])} |" in report
    for arm, values in results["recon"].items():
        assert f"| {arm} | " + pm(values["fitted masked"], 1, 4) in report


def test_controls_and_verdict_lines(demo_run):
    out, _, _ = demo_run
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    comparisons = {r["comparison"] for r in results["comparisons"]}
    assert {"victor vs baseline", "baseline[seed+100] vs baseline", "baseline vs baseline[stage 2 x0.25]",
            "baseline vs baseline[stage 2 x0.5]", "baseline[stage 2 x0.5] vs baseline[stage 2 x0.25]",
            "victor[matching=nearest] vs victor"} <= comparisons
    assert "| baseline[seed+100] | negative control |" in report
    assert "| baseline[stage 2 x0.25] | positive control |" in report
    section = report.split("## What this instrument can detect")[1].split("##")[0]
    lines = [line for line in section.splitlines() if line.startswith("- **")]
    assert len(lines) == len(MEASURES) * 2  # per measure, one line per arm comparison (two share the role "arm")
    for line in lines:
        assert "minimum detectable effect" in line and "positive control" in line and "negative control" in line
    assert sum("victor[matching=nearest] vs victor:" in line for line in lines) == len(MEASURES)
    # the fine-detail questions: a secondary measure, in Holm's family of every arm comparison
    fine = [r for r in results["comparisons"] if r["measure"] == MEASURES["fine"][0]]
    assert len(fine) == len(comparisons) and all("p_holm" in r for r in fine if r["role"] == "arm")
    row = next(line for line in report.splitlines() if line.startswith("| gqa_fine:size |"))
    assert row.split("|")[-3].strip() == "50.0 (chance)" and 0 <= float(row.split("|")[-2]) <= 100  # floor, ceiling
    assert next(line for line in report.splitlines() if line.startswith("| gqa:colour |")).endswith("| — |")
    assert all(r["n_seeds"] == 2 and len(r["per_seed"]) == 2 for r in results["comparisons"])
    # the verdict section: the declaration with its commit, the floors, the controls, then verdict or failure
    verdicts = report.split("## Verdict")[1].split("## Paired")[0]
    assert "**Primary measure** (declared before the run): open QA: gold answer log-lik" in verdicts
    assert len(results["floors"]) == len(ARMS) and "with shuffled images" in verdicts
    controls = results["controls"]
    if controls["passed"]:
        assert "**Verdict**" in verdicts and "instrument failed" not in verdicts
    else:
        assert "**The instrument failed**" in verdicts and "**Verdict**" not in verdicts
    primary = [r for r in results["comparisons"] if r["measure"] == "open QA: gold answer log-lik"]
    for row in primary:
        assert f"{row['comparison']}" in verdicts and format_comparison(row) in verdicts
    # POPE: per split, and pooled with no question counted twice
    assert results["pope_items"]["distinct"] < results["pope_items"]["listed"]
    assert {"random", "popular", "adversarial", "pooled, de-duplicated"} <= set(results["pope"]["baseline"])


def test_rerun_reuses_finished_stages(demo_run):
    out, cmd, _ = demo_run
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0
    # stage 1 + 2 seeds x (4 arms x (stage 1.5 + stage 2) + the dose ladder's two stage 2s)
    assert again.stdout.count("reusing") == 1 + 2 * (4 * 2 + 2)
    assert "training ->" not in again.stdout and "] eval " not in again.stdout


def test_sample_efficiency_adds_stage2_on_shares_of_the_data(demo_run):
    out, cmd, _ = demo_run
    run = subprocess.run([c for c in cmd if c not in ("--ablate", "matching=nearest")] + ["--seeds", "1",
                         "--sample-efficiency"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("training ->") == 4  # baseline and victor, 25% and 50%
    results = json.loads((out / "results.json").read_text())
    assert set(results["sample_efficiency"]) == {f"{a} | {f}" for a in ("baseline", "victor") for f in (0.25, 0.5, 1.0)}
    for values in results["sample_efficiency"].values():  # the primary measure too, scored on every share
        assert set(values) == {"mmbench", "mmbench_text", "pope", "gqa_loglik"} and values["gqa_loglik"][0] < 0
    report = (out / "report.md").read_text()
    assert "## Sample efficiency" in report and "figures/sample_efficiency.png" in report
    assert len(json.loads((out / "data" / "stage2-25pct.json").read_text())) == 6  # a quarter of 24 records
