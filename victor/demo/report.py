"""The demo's report: tables (mean ± std over seeds), figures, how it was made. Reads a plain
`DemoResults` record, not the running demo."""
from __future__ import annotations

import json
import platform
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from victor import __version__
from victor.tiny.world import WorldPaths

BENCHMARKS = ("mmbench", "pope", "gqa")


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
    runs: dict  # (arm, seed) -> {"stage1_5": dir, "stage2": dir, "eval": {benchmark: summary}}
    timings: dict[str, float]
    command: str

    @property
    def arm_names(self) -> list[str]:
        return [name for name, _ in self.arms]


HEADLINE = [("mmbench", "accuracy", "MMBench acc"), ("mmbench", "circular_accuracy", "MMBench circular"),
            ("pope", "f1_category_mean", "POPE F1"), ("pope", "accuracy", "POPE acc"),
            ("gqa", "accuracy", "open QA (GQA fmt)")]


def mean_std(values: list[float]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def summary_tables(res: DemoResults) -> tuple[str, str, dict]:
    arms, seeds, results = res.arm_names, range(res.seeds), res.runs
    head = "| arm | " + " | ".join(h for _, _, h in HEADLINE) + " |"
    lines = [head, "|" + "---|" * (len(HEADLINE) + 1)]
    for arm in arms:
        cells = [mean_std([results[arm, s]["eval"][b]["metrics"].get(m) for s in seeds]) for b, m, _ in HEADLINE]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    per_type: dict[str, dict[str, list[float]]] = {}
    for arm in arms:
        for s in seeds:
            for bench, table in (("gqa", "category"), ("mmbench", "category")):
                rows = results[arm, s]["eval"][bench]["tables"].get(table, {})
                for qtype, row in rows.items():
                    per_type.setdefault(f"{bench}:{qtype}", {}).setdefault(arm, []).append(row["accuracy"])
    majority = majority_answer_rates(res.world.gqa)
    type_lines = ["| question type | " + " | ".join(arms) + " | majority answer |", "|" + "---|" * (len(arms) + 2)]
    for key in sorted(per_type):
        bench, _, qtype = key.partition(":")
        floor = f"{100 * majority[qtype]:.1f}" if bench == "gqa" and qtype in majority else "—"
        type_lines.append(f"| {key} | " + " | ".join(mean_std(per_type[key].get(a, [])) for a in arms) + f" | {floor} |")
    return "\n".join(lines), "\n".join(type_lines), per_type


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
    from victor.demo.figures import make_figures

    table, type_table, per_type = summary_tables(res)
    figures = make_figures(res, per_type)
    timings = "\n".join(f"| {k} | {v:.0f} s |" for k, v in res.timings.items())
    chance = ("Chance: MMBench 25% (4 options; existence questions with 2 options: 50%), POPE accuracy 50%; "
              "open questions: see 'majority answer' below (always giving the most frequent answer).")
    text = f"""# victor demo: stage 1.5 (ViCToR) vs plain caption pretraining, in miniature

Both arms start from the same stage-1 checkpoint, see the same stage-1.5 data for the same
number of steps, then get the same stage 2. Mean ± std over {res.seeds} seed(s); scores in %.

{table}

{chance}

## Accuracy per question type

{type_table}

## Figures

{chr(10).join(f"![{name}]({path})" for name, path in figures.items())}

## How this was made

- command: `{res.command}` (preset `{res.preset}`, precision {res.precision})
- victor {__version__}, torch {torch.__version__}, transformers {transformers.__version__},
  Python {platform.python_version()}, {platform.machine()}, {torch.get_num_threads()} threads
- world: `{res.world.root}`; stage 1: `{res.stage1}`
- every stage directory holds `victor_stage.json` (all arguments, loss history) and a stock
  LLaVA checkpoint; predictions and summaries are in `stages/stage2-*/eval/`

| phase | time |
|---|---|
{timings}
"""
    path = res.root / "report.md"
    path.write_text(text)
    (res.root / "results.json").write_text(json.dumps({
        f"{arm}/seed{seed}": {b: r["eval"][b]["metrics"] for b in BENCHMARKS} for (arm, seed), r in res.runs.items()
    }, indent=2))
    print("\n" + table + "\n\n" + type_table + "\n")
    return path


