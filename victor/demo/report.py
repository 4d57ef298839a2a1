"""The demo's report: headline table (mean ± std over seeds), paired comparisons with their
verdicts, what the instrument resolves (controls), probes, reconstruction, sample efficiency,
figures, how it was made. Reads a plain `DemoResults` record (`results.py`), not the running
demo; every number it prints is also in `results.json` (both come from `evidence.collect`)."""
from __future__ import annotations

import json
import math
import platform
import statistics
from collections import Counter
from pathlib import Path

import torch
import transformers

from victor import __version__
from victor.demo.probe import ATTRIBUTES
from victor.demo.results import DemoResults

BENCHMARKS = ("mmbench", "pope", "gqa", "gqa_fine")
DECIMALS = {"points": 1, "nats/token": 3, "nats": 3, "SmoothL1": 4, "ratio": 3}

HEADLINE = [("mmbench", "MMBench acc"), ("mmbench_circular", "MMBench circular"),
            ("mmbench_text", "MMBench acc (option text)"), ("pope", "POPE acc (de-dup.)"), ("pope_auc", "POPE AUC"),
            ("pope_f1", "POPE F1 (split mean)"), ("pope_yes", "POPE yes %"), ("pope_margin", "POPE signed margin"),
            ("gqa", "open QA exact match"), ("gqa_loglik", "open QA gold log-lik"), ("fine", "fine-detail acc")]
NATS = {"gqa_loglik", "pope_margin", "pope_auc"}  # printed as they are (nats, AUC), not as %


def pm(pair: list[float], scale: float = 100, decimals: int = 1) -> str:
    mean, std = pair
    return f"{scale * mean:.{decimals}f} ± {scale * std:.{decimals}f}"


def format_comparison(row: dict) -> str:
    """`+1.2 [-0.3, +2.8]` in the row's unit (points, nats, ...): the bootstrap over questions and seeds."""
    d, s = DECIMALS.get(row["unit"], 2), row["scale"]
    return f"{s * row['diff']:+.{d}f} [{s * row['low']:+.{d}f}, {s * row['high']:+.{d}f}]"


def format_t(row: dict) -> str:
    """`[-0.4, +2.9]`: the 95% t-interval over the per-seed differences (n - 1 degrees of freedom)."""
    d, s = DECIMALS.get(row["unit"], 2), row["scale"]
    if not math.isfinite(row["t_low"]):
        return "— (1 seed)"
    return f"[{s * row['t_low']:+.{d}f}, {s * row['t_high']:+.{d}f}]"


def format_p(p) -> str:
    return "—" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.3f}"


def comparison_table(rows: list[dict], first: str = "measure") -> str:
    lines = [f"| comparison | {first} | difference [95% bootstrap CI] | 95% t-interval over seeds | p (seeds) | "
             "Holm p | MDE (80% power) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, s = DECIMALS.get(r["unit"], 2), r["scale"]
        mde = f"{s * r['mde']:.{d}f}" if math.isfinite(r["mde"]) else "—"
        lines.append(f"| {r['comparison']} | {r['measure']} ({r['unit']}) | {format_comparison(r)} | {format_t(r)} | "
                     f"{format_p(r['p_seeds'])} | {format_p(r.get('p_holm'))} | {mde} | {r['verdict']} |")
    return "\n".join(lines)


def headline_table(ev: dict, roles: dict) -> str:
    lines = ["| arm | role | " + " | ".join(h for _, h in HEADLINE) + " |", "|" + "---|" * (len(HEADLINE) + 2)]
    for arm, values in ev["headline"].items():
        cells = [pm(values[k], 1, 3) if k in NATS else pm(values[k]) for k, _ in HEADLINE]
        lines.append(f"| {arm} | {roles.get(arm, 'arm')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def resolution_lines(ev: dict) -> str:
    """Per measure and per arm comparison (rows are keyed by the comparison, never by the role, so two
    arm comparisons sharing a role each get their own line): the half-widths of its two intervals, its
    minimum detectable effect, and every control on that measure with its verdict."""
    lines = []
    rows = ev["comparisons"]
    for measure in dict.fromkeys(r["measure"] for r in rows):
        group = {r["comparison"]: r for r in rows if r["measure"] == measure}
        mains = [r for r in group.values() if r["role"] == "arm"]
        controls = [r for r in group.values() if r["role"] != "arm"]
        for main in mains:
            d, s, u = DECIMALS.get(main["unit"], 2), main["scale"], main["unit"]
            t_half = (main["t_high"] - main["t_low"]) / 2
            t_text = f"±{s * t_half:.{d}f}" if math.isfinite(t_half) else "— (1 seed)"
            mde = f"{s * main['mde']:.{d}f} {u}" if math.isfinite(main["mde"]) else "— (1 seed)"
            parts = [f"{c['role']} {c['comparison']} {format_comparison(c)}: {c['verdict']}" for c in controls]
            lines.append(f"- **{measure}**, {main['comparison']}: 95% half-widths ±{s * main['half_width']:.{d}f} {u} "
                         f"(bootstrap), {t_text} (t over seeds); minimum detectable effect at 80% power {mde}"
                         + ("; " + "; ".join(parts) if parts else "") + ".")
    return "\n".join(lines)


def verdict_lines(ev: dict) -> str:
    """The declared primary measure (with its commit), the floors, the controls, and only when both
    controls pass, the verdict on the arms; otherwise, plainly, that the instrument failed."""
    from victor.demo.evidence import MEASURES, PRIMARY

    label = MEASURES[PRIMARY][0]
    dec, ctl = ev["declaration"], ev["controls"]
    d, unit = DECIMALS.get(dec["unit"], 3), dec["unit"]
    commit = dec.get("commit")
    when = (f"declared in `victor/demo/declared.py` at commit `{commit[:10]}` ({dec.get('date')}); this run started "
            f"{dec.get('run_started')} at commit `{(dec.get('head') or '?')[:10]}`" if commit else
            "declared in `victor/demo/declared.py`, which is not in a git checkout here (no commit to cite)")
    if dec.get("uncommitted"):
        when += "; **the declaration file had uncommitted changes when the run started: not declared before the run**"
    lines = [f"**Primary measure** (declared before the run): {label}, "
             f"{'higher' if dec['higher_is_better'] else 'lower'} is better, minimum effect of interest "
             f"{dec['min_effect']} {unit}; {when}.", "", "**Floors** (each arm with its own images vs the same arm "
             "with the images shuffled across questions; above its floor when both intervals exclude 0):", ""]
    for r in ev["floors"]:
        lines.append(f"- {r['comparison']}: {format_comparison(r)} {format_t(r)} {unit} (floor "
                     f"{r['floor'][0]:.{d}f}): **{'above its floor' if r['verdict'] == 'better' else 'NOT above its floor'}**")
    rows = {r["comparison"]: r for r in ev["comparisons"] if r["measure"] == label}
    pos, neg = ctl["positive"], ctl["negative"]
    ladder = ", ".join(f"{name} {m:.{d}f}" for _, name, m in pos["ladder"])
    lines += ["", "**Controls** (difference [95% bootstrap CI] [95% t-interval over seeds]):", ""]
    for r in rows.values():
        if r["role"] != "arm":
            lines.append(f"- {r['comparison']} ({r['role']}): {format_comparison(r)} {format_t(r)} {unit}: "
                         f"**{r['verdict']}** (bootstrap: {r['verdict_bootstrap']}; seeds: {r['verdict_seeds']})")
    lines += [f"- dose ladder (mean {label}): {ladder}; rises with the dose: {'yes' if pos['monotone'] else 'no'}",
              f"- positive control (dose ladder): **{'passed' if pos['passed'] else 'FAILED'}**; "
              f"negative control: **{'passed' if neg['passed'] else 'FAILED'}**", ""]
    arms = [r for r in rows.values() if r["role"] == "arm"]
    if ctl["passed"]:
        lines += ["**Verdict** (controls passed; a difference is claimed only when both intervals exclude 0):", ""]
        for r, v in zip(arms, ctl["arms"]):
            floor = "" if v["above floor"] else " (an arm of it is not above its floor: read with care)"
            lines.append(f"- {r['comparison']}: {format_comparison(r)} {format_t(r)} {unit}: **{r['verdict']}**; "
                         f"{v['size']}{floor}")
    else:
        failed = [n for n, ok in (("positive control (dose ladder)", pos["passed"]), ("negative control", neg["passed"]))
                  if not ok]
        lines += [f"**The instrument failed** ({' and '.join(failed)}): no verdict on the arms. "
                  + ("A failed positive control means this run cannot show that the measure moves with a known cause, "
                     "so a null result for the arms says nothing. " if not pos["passed"] else "")
                  + ("A failed negative control means seeds alone move the measure as far as this run resolves, "
                     "so any difference between arms may be seed noise. " if not neg["passed"] else "")
                  + "Open: whether stage 1.5 helps, hurts or does nothing on this measure. The arms' numbers, "
                  "for the record only:", ""]
        for r in arms:
            lines.append(f"- {r['comparison']}: {format_comparison(r)} {format_t(r)} {unit} (not a verdict)")
    return "\n".join(lines)


def pope_split_table(ev: dict) -> str:
    """POPE per split, as POPE reports it, and pooled with each distinct question once."""
    lines = ["| arm | split | n | accuracy | ROC AUC (log p(yes) - log p(no)) | yes % |", "|---|---|---|---|---|---|"]
    for arm, splits in ev["pope"].items():
        for split, v in splits.items():
            lines.append(f"| {arm} | {split} | {v['n']} | {pm(v['accuracy'])} | {pm(v['auc'], 1, 3)} | {pm(v['yes'])} |")
    return "\n".join(lines)


def mask_info_table(ev: dict) -> str:
    if not ev.get("mask_info"):
        return ""
    # every arm's columns (victor's own head is measured for arms that have one), in first-seen order
    columns = list(dict.fromkeys(k for v in ev["mask_info"].values() for k in v if k != "removes information"))
    lines = ["| arm | " + " | ".join(columns) + " | removes information |", "|---|" + "---|" * (len(columns) + 1)]
    for arm, v in ev["mask_info"].items():
        lines.append(f"| {arm} | " + " | ".join(pm(v[c], 1, 3) if c in v else "—" for c in columns) +
                     f" | {'yes' if v['removes information'] else 'no'} |")
    return "\n".join(lines)


def probe_table(ev: dict) -> str:
    lines = ["| arm | checkpoint | layer | " + " | ".join(ATTRIBUTES) + " |", "|---|---|---|" + "---|" * len(ATTRIBUTES)]
    majority = None
    for key, values in ev["probe"].items():
        lines.append(f"| {' | '.join(key.split(' | '))} | " + " | ".join(pm(values[a]) for a in ATTRIBUTES) + " |")
        majority = values["majority"]
    if majority:
        lines.append("| majority class | | | " + " | ".join(f"{100 * majority[a]:.1f}" for a in ATTRIBUTES) + " |")
    return "\n".join(lines)


def recon_table(ev: dict) -> str:
    order = ("fitted", "own", "constant", "relative")
    columns = sorted({c for v in ev["recon"].values() for c in v}, key=lambda c: (order.index(c.split()[0]), c))
    lines = ["| arm | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for arm, values in ev["recon"].items():
        lines.append(f"| {arm} | " + " | ".join(pm(values[c], 1, 4) if c in values else "—" for c in columns) + " |")
    return "\n".join(lines)


def mi(triple: list[float], scale: float = 100, decimals: int = 1) -> str:
    """`mean [low, high]` (the 95% t-interval over seeds)."""
    mean, low, high = triple
    if not math.isfinite(low):
        return f"{scale * mean:.{decimals}f}"
    return f"{scale * mean:.{decimals}f} [{scale * low:.{decimals}f}, {scale * high:.{decimals}f}]"


def efficiency_table(ev: dict) -> str:
    from victor.demo.evidence import MEASURES

    _, _, _, scale, unit = MEASURES["gqa_loglik"]
    lines = ["| arm | share of stage-2 data | MMBench acc | MMBench acc (option text) | POPE acc (de-dup.) | "
             "open QA gold log-lik |", "|---|---|---|---|---|---|"]
    for key, values in ev["sample_efficiency"].items():
        arm, share = key.split(" | ")
        lines.append(f"| {arm} | {100 * float(share):.0f}% | {mi(values['mmbench'])} | {mi(values['mmbench_text'])} | "
                     f"{mi(values['pope'])} | {mi(values['gqa_loglik'], scale, DECIMALS[unit])} |")
    if ev.get("efficiency_comparisons"):
        lines += ["", comparison_table(ev["efficiency_comparisons"])]
    return "\n".join(lines)


def per_type_table(res: DemoResults) -> tuple[str, dict]:
    """Accuracy per question type (MMBench and fine-detail questions by likelihood, open questions by
    generation)."""
    arms, per_type = res.arm_names, {}
    for arm in arms:
        for s in range(res.seeds):
            for bench in ("gqa", "mmbench", "gqa_fine"):
                for qtype, row in res.runs[arm, s]["eval"][bench]["tables"].get("category", {}).items():
                    per_type.setdefault(f"{bench}:{qtype}", {}).setdefault(arm, []).append(row["accuracy"])
    majority = majority_answer_rates(res.world.gqa)
    lines = ["| question type | " + " | ".join(arms) + " | majority answer | LLM reading the true scene |",
             "|" + "---|" * (len(arms) + 3)]
    for key in sorted(per_type):
        bench, _, qtype = key.partition(":")
        floor = (f"{100 * majority[qtype]:.1f}" if bench == "gqa" and qtype in majority else
                 "50.0 (chance)" if bench == "gqa_fine" else "—")
        cells = [pm([statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0]) if (v := per_type[key].get(a))
                 else "-" for a in arms]
        ceiling = f"{100 * res.ceilings[key]:.1f}" if key in res.ceilings else "—"
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {floor} | {ceiling} |")
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
              "pope": pope_split_table(ev), "pope_items": f"{ev['pope_items']['listed']} items listed, {ev['pope_items']['distinct']} distinct", "mask_info": mask_info_table(ev), "floors": comparison_table(ev["floors"]),
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
    print("\n" + "\n\n".join(tables[k] for k in ("headline", "verdicts", "resolution")) + "\n")
    return path
