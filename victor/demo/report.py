"""The demo's report: headline table (mean ± std over seeds), paired comparisons with their
verdicts, what the instrument resolves (controls), probes, reconstruction, sample efficiency,
figures, how it was made. Reads a plain `DemoResults` record, not the running demo; every
number it prints is also in `results.json` (both come from `evidence.collect`)."""
from __future__ import annotations

import json
import platform
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from victor import __version__
from victor.tiny.world import WorldPaths

BENCHMARKS = ("mmbench", "pope", "gqa")
DECIMALS = {"points": 1, "nats/token": 3, "nats": 3, "SmoothL1": 4, "ratio": 3}


@dataclass
class DemoResults:
    """What a finished demo run hands to its report."""

    root: Path
    preset: str
    precision: str
    seeds: int
    arms: list[tuple[str, bool]]  # (name, runs stage 1.5 with comprehension)
    world: WorldPaths
    stage1: Path
    runs: dict  # (arm, seed) -> {"stage1_5", "stage2", "eval": {benchmark: summary}, "probe", ["recon"]}
    timings: dict[str, float]
    command: str
    roles: dict[str, str] = field(default_factory=dict)  # arm -> arm | positive control | negative control
    comparisons: list = field(default_factory=list)  # [arm, reference, role]: difference = arm - reference
    sample_efficiency: dict = field(default_factory=dict)  # (arm, share of stage-2 data) -> [stage-2 dir per seed]
    steps: dict = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per phase (all threads)

    @property
    def arm_names(self) -> list[str]:
        return [name for name, _ in self.arms]


HEADLINE = [("mmbench", "MMBench acc"), ("mmbench_circular", "MMBench circular"),
            ("mmbench_text", "MMBench acc (option text)"), ("pope", "POPE acc"), ("pope_f1", "POPE F1"),
            ("pope_yes", "POPE yes %"), ("pope_margin", "POPE signed margin"), ("gqa", "open QA exact match"),
            ("gqa_loglik", "open QA gold log-lik")]
NATS = {"gqa_loglik", "pope_margin"}  # printed as they are (nats), not as %


def pm(pair: list[float], scale: float = 100, decimals: int = 1) -> str:
    mean, std = pair
    return f"{scale * mean:.{decimals}f} ± {scale * std:.{decimals}f}"


def format_comparison(row: dict) -> str:
    """`+1.2 [-0.3, +2.8]` in the row's unit (points, nats, ...)."""
    d, s = DECIMALS.get(row["unit"], 2), row["scale"]
    return f"{s * row['diff']:+.{d}f} [{s * row['low']:+.{d}f}, {s * row['high']:+.{d}f}]"


def comparison_table(rows: list[dict], first: str = "measure") -> str:
    lines = [f"| comparison | {first} | difference [95% CI] | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['comparison']} | {r['measure']} ({r['unit']}) | {format_comparison(r)} | {r['verdict']} |"
              for r in rows]
    return "\n".join(lines)


def headline_table(ev: dict, roles: dict) -> str:
    lines = ["| arm | role | " + " | ".join(h for _, h in HEADLINE) + " |", "|" + "---|" * (len(HEADLINE) + 2)]
    for arm, values in ev["headline"].items():
        cells = [pm(values[k], 1, 3) if k in NATS else pm(values[k]) for k, _ in HEADLINE]
        lines.append(f"| {arm} | {roles.get(arm, 'arm')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def resolution_lines(ev: dict) -> str:
    """Per measure: the smallest difference the victor-vs-baseline comparison resolves, and the controls."""
    lines = []
    rows = ev["comparisons"]
    for measure in dict.fromkeys(r["measure"] for r in rows):
        by = {r["role"]: r for r in rows if r["measure"] == measure}
        main, plus, null = by.get("arm"), by.get("positive control"), by.get("negative control")
        if not (main and plus and null):
            continue
        d, s = DECIMALS.get(main["unit"], 2), main["scale"]
        lines.append(f"- **{measure}**: resolves differences beyond ±{s * main['half_width']:.{d}f} {main['unit']} "
                     f"(95% CI half-width of victor vs baseline); positive control {format_comparison(plus)}: "
                     f"{plus['verdict']}; negative control {format_comparison(null)}: {null['verdict']}.")
    return "\n".join(lines)


def verdict_lines(ev: dict) -> str:
    """One line per comparison on the primary measure: what the demo concludes, controls first."""
    from victor.demo.evidence import MEASURES, PRIMARY

    label = MEASURES[PRIMARY][0]
    order = {"positive control": 0, "negative control": 1, "arm": 2}
    rows = sorted((r for r in ev["comparisons"] if r["measure"] == label), key=lambda r: order.get(r["role"], 3))
    return "\n".join(f"- {r['comparison']} ({r['role']}): {format_comparison(r)} {r['unit']}: **{r['verdict']}**"
                     for r in rows)


def probe_table(ev: dict) -> str:
    lines = ["| arm | checkpoint | layer | occupancy | colour | shape |", "|---|---|---|---|---|---|"]
    majority = None
    for key, values in ev["probe"].items():
        lines.append(f"| {' | '.join(key.split(' | '))} | " + " | ".join(pm(values[a]) for a in
                                                                       ("occupancy", "colour", "shape")) + " |")
        majority = values["majority"]
    if majority:
        lines.append("| majority class | | | " + " | ".join(f"{100 * majority[a]:.1f}" for a in
                                                              ("occupancy", "colour", "shape")) + " |")
    return "\n".join(lines)


def recon_table(ev: dict) -> str:
    order = ("fitted", "own", "constant", "relative")
    columns = sorted({c for v in ev["recon"].values() for c in v}, key=lambda c: (order.index(c.split()[0]), c))
    lines = ["| arm | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for arm, values in ev["recon"].items():
        lines.append(f"| {arm} | " + " | ".join(pm(values[c], 1, 4) if c in values else "—" for c in columns) + " |")
    return "\n".join(lines)


def efficiency_table(ev: dict) -> str:
    from victor.demo.evidence import MEASURES

    _, _, _, scale, unit = MEASURES["gqa_loglik"]
    lines = ["| arm | share of stage-2 data | MMBench acc | MMBench acc (option text) | POPE acc | open QA gold log-lik |",
             "|---|---|---|---|---|---|"]
    for key, values in ev["sample_efficiency"].items():
        arm, share = key.split(" | ")
        loglik = pm(values["gqa_loglik"], scale, DECIMALS[unit]) if "gqa_loglik" in values else "—"
        lines.append(f"| {arm} | {100 * float(share):.0f}% | {pm(values['mmbench'])} | {pm(values['mmbench_text'])} | "
                     f"{pm(values['pope'])} | {loglik} |")
    return "\n".join(lines)


def per_type_table(res: DemoResults) -> tuple[str, dict]:
    """Accuracy per question type (MMBench by likelihood, open questions by generation)."""
    arms, per_type = res.arm_names, {}
    for arm in arms:
        for s in range(res.seeds):
            for bench in ("gqa", "mmbench"):
                for qtype, row in res.runs[arm, s]["eval"][bench]["tables"].get("category", {}).items():
                    per_type.setdefault(f"{bench}:{qtype}", {}).setdefault(arm, []).append(row["accuracy"])
    majority = majority_answer_rates(res.world.gqa)
    lines = ["| question type | " + " | ".join(arms) + " | majority answer |", "|" + "---|" * (len(arms) + 2)]
    for key in sorted(per_type):
        bench, _, qtype = key.partition(":")
        floor = f"{100 * majority[qtype]:.1f}" if bench == "gqa" and qtype in majority else "—"
        cells = [pm([statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0]) if (v := per_type[key].get(a))
                 else "-" for a in arms]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {floor} |")
    return "\n".join(lines), per_type


def majority_answer_rates(questions_file) -> dict[str, float]:
    """Per question type, the accuracy of always giving that type's most frequent answer:
    the bar a model must clear to show it reads the image, not the answer prior."""
    answers: dict[str, Counter] = {}
    with open(questions_file) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                answers.setdefault(row.get("category", "?"), Counter())[row["answer"]] += 1
    return {k: c.most_common(1)[0][1] / sum(c.values()) for k, c in answers.items()}


def write_report(res: DemoResults) -> Path:
    from victor.demo.evidence import collect
    from victor.demo.figures import make_figures
    from victor.demo.report_text import render

    ev = collect(res)
    type_table, per_type = per_type_table(res)
    figures = make_figures(res, per_type, ev)
    tables = {"headline": headline_table(ev, res.roles), "comparisons": comparison_table(ev["comparisons"]),
              "resolution": resolution_lines(ev), "verdicts": verdict_lines(ev), "probe": probe_table(ev),
              "probe_comparisons": comparison_table(ev["probe_comparisons"], "attribute, checkpoint, layer"),
              "recon": recon_table(ev) if ev["recon"] else "",
              "recon_comparisons": comparison_table(ev["recon_comparisons"]) if ev["recon_comparisons"] else "",
              "efficiency": efficiency_table(ev) if ev["sample_efficiency"] else "", "per_type": type_table}
    environment = (f"victor {__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
                   f"Python {platform.python_version()}, {platform.machine()}, {torch.get_num_threads()} threads")
    path = res.root / "report.md"
    path.write_text(render(res, tables, figures, environment))
    runs = {f"{arm}/seed{seed}": {b: r["eval"][b]["metrics"] for b in BENCHMARKS} for (arm, seed), r in res.runs.items()}
    (res.root / "results.json").write_text(json.dumps({"runs": runs, **ev}, indent=1))
    print("\n" + "\n\n".join(tables[k] for k in ("headline", "verdicts", "comparisons", "resolution", "probe")) + "\n")
    return path
