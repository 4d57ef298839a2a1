"""`victor demo`: the paper's ablation in miniature, on the embedded tiny world.

    world -> stage 1 -> { baseline: plain caption training | victor: stage 1.5 | ablations }
          -> stage 2 (same for every arm) -> MMBench / POPE / GQA-format evaluation -> report

Every arm starts from the same stage-1 checkpoint and sees the same stage-1.5 data and step
count. Each stage's output directory is named by a hash of everything that determines it,
so an interrupted demo re-run reuses finished stages and finished predictions.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

PRESETS = {  # world size, backbone pretraining, steps per stage, seeds ("smoke" is for the tests)
    "smoke": dict(n_train=24, n_val=6, llm_pretrain=4, vision_pretrain=4, stage1=3, stage15=3, stage2=3, seeds=1,
                  pool_size=64),
    "quick": dict(n_train=600, n_val=60, llm_pretrain=150, vision_pretrain=100, stage1=60, stage15=60, stage2=150,
                  seeds=1, pool_size=128),
    "default": dict(n_train=2000, n_val=300, llm_pretrain=300, vision_pretrain=200, stage1=600, stage15=120,
                    stage2=240, seeds=3, pool_size=256),
    "full": dict(n_train=4000, n_val=300, llm_pretrain=600, vision_pretrain=300, stage1=600, stage15=600,
                 stage2=1200, seeds=3, pool_size=256),
}
# --ablate key=value -> comprehension option (recon=off sets the weight to zero)
ABLATIONS = {"matching": "matching", "attention": "attention", "pool-init": "pool_init", "mask-ratio": "mask_ratio",
             "recon-head": "recon_head", "recon-positions": "recon_positions", "pool-size": "pool_size",
             "recon-target": "recon_target"}
BENCHMARKS = ("mmbench", "pope", "gqa")


@dataclass
class Arm:
    name: str
    comprehension: bool
    options: dict = field(default_factory=dict)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="victor demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="victor-demo", help="report and run directory (default: victor-demo)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="preset", const="quick", help="~2 minute smoke run")
    size.add_argument("--full", action="store_const", dest="preset", const="full", help="longer, stronger evidence")
    size.add_argument("--preset", choices=sorted(PRESETS), help="named size (smoke is for tests)")
    p.add_argument("--seeds", type=int, help="seeds per arm (default: 3; --quick: 1)")
    p.add_argument("--ablate", action="append", default=[], metavar="KEY=VALUE",
                   help=f"add an arm: victor with one option changed; keys: {', '.join(ABLATIONS)}, recon=off")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="CPU autocast precision (auto: bf16 if this CPU multiplies bf16 faster than fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.set_defaults(preset="default")
    args = p.parse_args(argv)
    if args.precision == "auto":
        args.precision = fastest_precision()
    return args


def fastest_precision(size: int = 256, repeats: int = 20) -> str:
    """bf16 autocast pays off only where the CPU has native bf16 matmuls (AVX512-BF16, AMX);
    elsewhere it is several times slower than fp32. Time one matmul each way and pick."""
    import time

    import torch

    def seconds(dtype) -> float:
        x = torch.randn(size, size).to(dtype)
        x @ x
        start = time.perf_counter()
        for _ in range(repeats):
            x @ x
        return time.perf_counter() - start

    return "bf16" if seconds(torch.bfloat16) < 0.8 * seconds(torch.float32) else "fp32"


def make_arms(ablations: list[str]) -> list[Arm]:
    arms = [Arm("baseline", False), Arm("victor", True)]
    for spec in ablations:
        key, _, value = spec.partition("=")
        if key == "recon" and value == "off":
            arms.append(Arm("victor[recon=off]", True, {"recon_weight": "0"}))
        elif key in ABLATIONS and value:
            arms.append(Arm(f"victor[{key}={value}]", True, {ABLATIONS[key]: value}))
        else:
            raise SystemExit(f"--ablate {spec!r}: use KEY=VALUE with KEY in {', '.join(ABLATIONS)} or recon=off")
    return arms


def recipe(name: str) -> str:
    return str(resources.files("victor") / "recipes" / "tiny" / name)


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


class Demo:
    def __init__(self, args):
        self.args = args
        self.preset = PRESETS[args.preset]
        self.root = Path(args.output)
        self.seeds = args.seeds or self.preset["seeds"]
        self.arms = make_arms(args.ablate)
        self.timings: dict[str, float] = {}

    def log(self, message: str) -> None:
        print(f"[victor demo {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def timed(self, label, fn, *a, **kw):
        start = time.time()
        result = fn(*a, **kw)
        self.timings[label] = self.timings.get(label, 0.0) + time.time() - start
        return result

    # -- stages -------------------------------------------------------------------------------
    def stage(self, label: str, recipe_file: str, overrides: list[str], parent: str | None) -> Path:
        """Run (or reuse) one stage; its directory is named by what determines it."""
        from victor.train.run import train_from_recipe

        key = digest(recipe_file, Path(recipe(recipe_file)).read_text(), overrides, parent)
        out = self.root / "stages" / f"{label}-{key}"
        if (out / "victor_stage.json").exists():
            self.log(f"{label}: reusing {out}")
            return out
        self.log(f"{label}: training -> {out}")
        common = ["--output_dir", str(out), "--report_to", "tensorboard",
                  "--bf16", str(self.args.precision == "bf16"), "--disable_tqdm", "False"]
        self.timed(label.split("-")[0], train_from_recipe, recipe(recipe_file), overrides + common)
        return out

    def world_overrides(self) -> list[str]:
        w = self.world
        return ["--image_root", str(w.images)]

    def run(self) -> Path:
        import torch

        from victor.data.world import WorldConfig
        from victor.tiny import prepare_world

        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        started = time.time()
        self.root.mkdir(parents=True, exist_ok=True)
        p = self.preset
        self.log(f"preset {self.args.preset}: {len(self.arms)} arms x {self.seeds} seeds; output {self.root}")
        world_cfg = WorldConfig(seed=0, n_train=p["n_train"], n_val=p["n_val"])
        self.world, vision, llm = self.timed("world", prepare_world, self.root / "world", world_cfg,
                                             llm_pretrain_steps=p["llm_pretrain"],
                                             vision_pretrain_steps=p["vision_pretrain"])
        s1 = self.stage("stage1", "stage1.yaml", [
            "--vision", vision, "--llm", llm, "--data_path", str(self.world.stage1), *self.world_overrides(),
            "--max_steps", str(p["stage1"]), "--seed", "0"], parent=digest(vars(world_cfg)))
        results = {}
        for seed in range(self.seeds):
            for arm in self.arms:
                s15 = self.stage(f"stage1_5-{arm.name}-s{seed}", "stage1_5.yaml", [
                    "--init_from", str(s1), "--data_path", str(self.world.stage15), *self.world_overrides(),
                    "--max_steps", str(p["stage15"]), "--seed", str(seed), "--pool_size", str(p["pool_size"]),
                    "--comprehension", str(arm.comprehension),
                    *[x for k, v in arm.options.items() for x in (f"--{k}", v)]], parent=str(s1))
                s2 = self.stage(f"stage2-{arm.name}-s{seed}", "stage2.yaml", [
                    "--init_from", str(s15), "--data_path", str(self.world.stage2), *self.world_overrides(),
                    "--max_steps", str(p["stage2"]), "--seed", str(seed)], parent=str(s15))
                results[arm.name, seed] = {"stage1_5": s15, "stage2": s2, "eval": self.evaluate(s2, arm, seed)}
        self.timings["total"] = time.time() - started
        report = self.timed("report", write_report, self, s1, results)
        self.log(f"done in {self.timings['total']:.0f}s; report: {report}")
        return report

    def evaluate(self, model_dir: Path, arm: Arm, seed: int) -> dict:
        from victor.eval.run import run_benchmark
        from victor.infer import Generator

        data = {"mmbench": self.world.mmbench, "pope": self.world.pope["random"].parent, "gqa": self.world.gqa}
        summaries, generator = {}, None
        for bench in BENCHMARKS:
            out = model_dir / "eval" / bench
            if (out / "summary.json").exists():
                summaries[bench] = json.loads((out / "summary.json").read_text())
                continue
            if generator is None:
                generator = Generator(str(model_dir))
            self.log(f"eval {bench}: {arm.name} seed {seed}")
            summaries[bench] = self.timed("eval", run_benchmark, bench, data[bench], self.world.images,
                                          lambda images, prompts: generator(images, prompts, max_new_tokens=4),
                                          out, batch_size=64)
        return summaries


# -- report -----------------------------------------------------------------------------------
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


def summary_tables(demo: Demo, results: dict) -> tuple[str, str, dict]:
    arms = [a.name for a in demo.arms]
    seeds = range(demo.seeds)
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
    majority = majority_answer_rates(demo.world.gqa)
    type_lines = ["| question type | " + " | ".join(arms) + " | majority answer |", "|" + "---|" * (len(arms) + 2)]
    for key in sorted(per_type):
        bench, _, qtype = key.partition(":")
        floor = f"{100 * majority[qtype]:.1f}" if bench == "gqa" and qtype in majority else "—"
        type_lines.append(f"| {key} | " + " | ".join(mean_std(per_type[key].get(a, [])) for a in arms) + f" | {floor} |")
    return "\n".join(lines), "\n".join(type_lines), per_type


def majority_answer_rates(questions_file) -> dict[str, float]:
    """Per question type, the accuracy of always giving that type's most frequent answer:
    the bar a model must clear to show it reads the image, not the answer prior."""
    from collections import Counter

    answers: dict[str, Counter] = {}
    with open(questions_file) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                answers.setdefault(row.get("category", "?"), Counter())[row["answer"]] += 1
    return {k: c.most_common(1)[0][1] / sum(c.values()) for k, c in answers.items()}


def write_report(demo: Demo, stage1: Path, results: dict) -> Path:
    import torch
    import transformers

    from victor import __version__

    table, type_table, per_type = summary_tables(demo, results)
    figures = make_figures(demo, results, per_type)
    command = "victor demo " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["demo"] else \
        "victor demo"
    timings = "\n".join(f"| {k} | {v:.0f} s |" for k, v in demo.timings.items())
    chance = ("Chance: MMBench 25% (4 options; existence questions with 2 options: 50%), POPE accuracy 50%; "
              "open questions: see 'majority answer' below (always giving the most frequent answer).")
    text = f"""# victor demo: stage 1.5 (ViCToR) vs plain caption pretraining, in miniature

Both arms start from the same stage-1 checkpoint, see the same stage-1.5 data for the same
number of steps, then get the same stage 2. Mean ± std over {demo.seeds} seed(s); scores in %.

{table}

{chance}

## Accuracy per question type

{type_table}

## Figures

{chr(10).join(f"![{name}]({path})" for name, path in figures.items())}

## How this was made

- command: `{command}` (preset `{demo.args.preset}`, precision {demo.args.precision})
- victor {__version__}, torch {torch.__version__}, transformers {transformers.__version__},
  Python {platform.python_version()}, {platform.machine()}, {torch.get_num_threads()} threads
- world: `{demo.world.root}`; stage 1: `{stage1}`
- every stage directory holds `victor_stage.json` (all arguments, loss history) and a stock
  LLaVA checkpoint; predictions and summaries are in `stages/stage2-*/eval/`

| phase | time |
|---|---|
{timings}
"""
    path = demo.root / "report.md"
    path.write_text(text)
    (demo.root / "results.json").write_text(json.dumps({
        f"{arm}/seed{seed}": {b: r["eval"][b]["metrics"] for b in BENCHMARKS} for (arm, seed), r in results.items()
    }, indent=2))
    print("\n" + table + "\n\n" + type_table + "\n")
    return path


def make_figures(demo: Demo, results: dict, per_type: dict) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        demo.log("matplotlib not installed: report without figures (pip install 'victor[report]')")
        return {}
    figdir = demo.root / "figures"
    figdir.mkdir(exist_ok=True)
    made = {}

    def history(run: Path):
        return json.loads((run / "victor_stage.json").read_text())["log_history"]

    # 1. training curves of stage 1.5
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for arm in demo.arms:
        h = history(results[arm.name, 0]["stage1_5"])
        key = "lm_loss" if arm.comprehension else "loss"
        ax1.plot([r["step"] for r in h if key in r], [r[key] for r in h if key in r], label=arm.name)
        if arm.comprehension:
            ax2.plot([r["step"] for r in h if "recon_loss" in r], [r["recon_loss"] for r in h if "recon_loss" in r],
                     label=arm.name)
    ax1.set(title="stage 1.5: LM loss (caption)", xlabel="step")
    ax2.set(title="stage 1.5: reconstruction loss", xlabel="step", yscale="log")
    ax1.legend(), ax2.legend()
    made["training curves"] = _save(fig, figdir / "training_curves.png", demo.root)

    # 2. pool utilisation
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for arm in [a for a in demo.arms if a.comprehension]:
        h = [r for r in history(results[arm.name, 0]["stage1_5"]) if "pool/rows_used_run" in r]
        steps = [r["step"] for r in h]
        ax1.plot(steps, [r["pool/rows_used_run"] for r in h], label=f"{arm.name} (run)")
        ax1.plot(steps, [r["pool/rows_used_batch"] for r in h], "--", label=f"{arm.name} (batch)")
        ax2.plot(steps, [r["pool/perplexity_batch"] for r in h], label=arm.name)
    ax1.set(title="pool rows used", xlabel="step")
    ax2.set(title="pool usage perplexity per batch", xlabel="step")
    ax1.legend(fontsize=7), ax2.legend(fontsize=7)
    made["pool utilisation"] = _save(fig, figdir / "pool_utilisation.png", demo.root)

    # 3. accuracy per question type
    keys = sorted(per_type)
    fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.9), 3.5))
    width = 0.8 / len(demo.arms)
    for i, arm in enumerate(demo.arms):
        vals = [100 * statistics.mean(per_type[k].get(arm.name, [0])) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], vals, width, label=arm.name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], keys, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="accuracy %", title="held-out accuracy per question type (mean over seeds)")
    ax.legend(fontsize=7)
    made["accuracy per question type"] = _save(fig, figdir / "accuracy_per_type.png", demo.root)

    # 4. masked patches and the pool rows that replaced them
    victor_arm = next(a for a in demo.arms if a.comprehension)
    made["masked patches"] = masked_patch_figure(demo, results[victor_arm.name, 0]["stage1_5"], figdir, plt)
    return made


def _save(fig, path: Path, root: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path.relative_to(root))


def masked_patch_figure(demo: Demo, stage15: Path, figdir: Path, plt) -> str:
    """A few held-out images: masked patches tinted by the pool row that replaced them."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from victor.config import parse_recipe
    from victor.model.assemble import load_model
    from victor.model.comprehension import VisualComprehension
    from victor.train.trainer import EXTRA_STATE

    model, processor = load_model(str(stage15))
    comp = parse_recipe(recipe("stage1_5.yaml"), ["--pool_size", str(demo.preset["pool_size"])])[3].to_config()
    vc = VisualComprehension(model, comp).eval()
    vc.load_extra_state_dict(load_file(str(stage15 / EXTRA_STATE)))
    names = sorted(p.name for p in demo.world.images.glob("val_*.png"))[:4]
    images = [Image.open(demo.world.images / n).convert("RGB") for n in names]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    torch.manual_seed(0)
    with torch.no_grad():
        tokens = torch.stack(list(model.model.get_image_features(pixel_values=pixels).pooler_output))
        _, mask, rows, _ = vc.mask_and_match(tokens)
    side = int(round(mask.shape[1] ** 0.5))
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(2, len(images), figsize=(2.6 * len(images), 5.4))
    for i, img in enumerate(images):
        size = img.size[0]
        axes[0, i].imshow(img)
        axes[0, i].set_title(names[i], fontsize=8)
        tinted = np.asarray(img.resize((size, size))).astype(float) / 255
        cell = size / side
        for pos, row in zip(mask[i].nonzero().flatten().tolist(), rows[i].tolist()):
            r, c = divmod(pos, side)
            y0, x0 = int(r * cell), int(c * cell)
            tinted[y0:int(y0 + cell), x0:int(x0 + cell)] = 0.35 * tinted[y0:int(y0 + cell), x0:int(x0 + cell)] + \
                0.65 * np.asarray(cmap(row % 20)[:3])
        axes[1, i].imshow(tinted)
        axes[1, i].set_title(f"{int(mask[i].sum())} masked, {rows[i].unique().numel()} pool rows", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("masked patches, tinted by the pool row (colour = row id mod 20) that replaced them", fontsize=9)
    return _save(fig, figdir / "masked_patches.png", demo.root)


def main(argv: list[str] | None = None) -> Path:
    return Demo(parse_args(argv if argv is not None else sys.argv[1:])).run()
