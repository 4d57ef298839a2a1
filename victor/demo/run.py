"""`victor demo`: the paper's ablation in miniature, on the embedded tiny world, with controls.

    world -> stage 1 -> { baseline: plain caption training | victor: stage 1.5 | ablations }
          -> stage 2 (same for every arm) -> likelihood-scored MMBench / POPE, GQA-format open
          questions -> linear probes of the visual positions -> reconstruction -> report

Every arm starts from the same stage-1 checkpoint and sees the same stage-1.5 data and step
count; seed s of every arm shares data order and mask seed. Two controls say what the
instrument can detect: `baseline[seed+100]` (the baseline with other seeds: must come out
equal) and a dose ladder, `baseline[stage 2 x0.25]` and `baseline[stage 2 x0.5]` (the baseline's
stage 1.5, then a quarter and half of the stage-2 steps: more stage 2 is known to be better).
What the verdict rests on (measure, direction, minimum effect, control criteria) is declared in
`victor.demo.declared`. Each stage's output directory is named by a hash of everything that
determines it (precision included), so an interrupted demo re-run reuses finished stages,
evaluations and probes.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from victor.config import ComprehensionConfig, Recipe, parse_recipe
from victor.demo.declared import DOSES
from victor.demo.probe import probe_model, split_images
from victor.demo.recon import reconstruction
from victor.demo.report import write_report
from victor.demo.results import DemoResults
from victor.eval.likelihood import run_likelihood
from victor.eval.run import run_benchmark
from victor.infer import Generator, Scorer
from victor.model.assemble import load_model
from victor.tiny.prepare import prepare_world
from victor.tiny.pretrain import slot_reader_accuracy
from victor.tiny.scenes import WorldConfig
from victor.train.run import train_stage

PRESETS = {  # world size, backbone pretraining, steps per stage, seeds ("smoke" is for the tests)
    "smoke": dict(n_train=24, n_val=6, llm_pretrain=4, vision_pretrain=4, stage1=3, stage15=3, stage2=8, seeds=1,
                  pool_size=64, extras=False),
    "quick": dict(n_train=600, n_val=60, llm_pretrain=150, vision_pretrain=100, stage1=60, stage15=60, stage2=150,
                  seeds=1, pool_size=128, extras=False),
    # default: 5 seeds of every arm and control within ~10 minutes on 2 cores, so fewer steps than the 2-seed
    # runs before it; pool_size 8: with 7 of 9 tokens masked and one-to-one matching, a 256-row pool seeded
    # with real tokens hands every masked token a near-copy of itself (replacement distance 0.014 on a
    # stage-1 checkpoint), 8 rows do not (0.57): the masking removes information (`recon.masking_information`);
    # llm_pretrain 600: the tiny LLM reading the true scene slots answers the fine-detail (size) questions at
    # 78% after 600 steps (the report's ceiling column, `slot_reader_accuracy`); 58% after 300 in a trial
    "default": dict(n_train=2000, n_val=200, llm_pretrain=600, vision_pretrain=200, stage1=400, stage15=40,
                    stage2=60, seeds=5, pool_size=8, extras=False),
    "full": dict(n_train=4000, n_val=300, llm_pretrain=600, vision_pretrain=300, stage1=600, stage15=600,
                 stage2=1200, seeds=5, pool_size=256, extras=True),  # extras: sample efficiency + `paper` arm
}
FRACTIONS = (0.25, 0.5)  # sample efficiency: stage 2 on these shares of its data (1.0 is the main run)
EFFICIENCY_ARMS = ("baseline", "victor")
CONTROL_SEED_OFFSET = 100
# --ablate key=value -> comprehension option (recon=off sets the weight to zero)
ABLATIONS = {"matching": "matching", "attention": "attention", "pool-init": "pool_init", "mask-ratio": "mask_ratio",
             "recon-head": "recon_head", "recon-positions": "recon_positions", "pool-size": "pool_size",
             "recon-target": "recon_target"}
LIKELIHOOD = ("mmbench", "pope", "gqa", "gqa_shuffled", "gqa_fine")  # scored by likelihood; gqa also by generation
# gqa_shuffled: the open questions with every image swapped for another question's (the floor of the primary
# measure: what an arm scores from the question text and answer prior alone); gqa_fine: the fine-detail
# questions (val/fine.jsonl: "Is the red circle small or large?"), each a choice of two answers


@dataclass
class Arm:
    name: str
    comprehension: bool
    options: dict = field(default_factory=dict)
    role: str = "arm"  # arm | positive control | negative control
    compare: tuple[str, str] | None = None  # (arm expected to differ, reference): difference = first - second
    seed_offset: int = 0  # negative control: the same recipe under other seeds
    stage2_steps: float = 1.0  # positive control: a share of the stage-2 steps, after the baseline's stage 1.5


def parse_args(argv):
    p = argparse.ArgumentParser(prog="victor demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="victor-demo", help="report and run directory (default: victor-demo)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="preset", const="quick", help="~2 minute smoke run")
    size.add_argument("--full", action="store_const", dest="preset", const="full", help="longer, stronger evidence")
    size.add_argument("--preset", choices=sorted(PRESETS), help="named size (smoke is for tests)")
    p.add_argument("--seeds", type=int, help="seeds per arm and control (default and --full: 5; --quick: 1)")
    p.add_argument("--ablate", action="append", default=[], metavar="KEY=VALUE",
                   help=f"add an arm: victor with one option changed; keys: {', '.join(ABLATIONS)}, recon=off")
    p.add_argument("--sample-efficiency", action="store_true", default=None,
                   help="also run stage 2 on 25%% and 50%% of its data after each arm's stage 1.5 (on in --full)")
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

    def seconds(dtype) -> float:
        x = torch.randn(size, size).to(dtype)
        x @ x
        start = time.perf_counter()
        for _ in range(repeats):
            x @ x
        return time.perf_counter() - start

    return "bf16" if seconds(torch.bfloat16) < 0.8 * seconds(torch.float32) else "fp32"


def dose_name(dose: float) -> str:
    return f"baseline[stage 2 x{dose:g}]"  # no "/" in a name: it names stage directories


def make_arms(ablations: list[str]) -> list[Arm]:
    """The two arms, the negative control, the positive control's dose ladder (stage 2 at the
    `declared.DOSES` shares of its steps; each compared with the baseline, and each rung with the
    next), and one arm per `--ablate KEY=VALUE` (one stage-1.5 option changed, typed like its
    field; compared with `victor`)."""
    defaults = ComprehensionConfig()
    arms = [Arm("baseline", False), Arm("victor", True, compare=("victor", "baseline")),
            Arm("baseline[seed+100]", False, role="negative control", compare=("baseline[seed+100]", "baseline"),
                seed_offset=CONTROL_SEED_OFFSET)]
    ladder = sorted(DOSES)
    for k, dose in enumerate(ladder):
        arms.append(Arm(dose_name(dose), False, role="positive control", compare=("baseline", dose_name(dose)),
                        stage2_steps=dose))

    for spec in dict.fromkeys(ablations):
        key, _, value = spec.partition("=")
        if key == "recon" and value == "off":
            arms.append(Arm("victor[recon=off]", True, {"recon_weight": 0.0}, compare=("victor[recon=off]", "victor")))
        elif key in ABLATIONS and value:
            option = ABLATIONS[key]
            try:
                typed = type(getattr(defaults, option))(value)
            except ValueError:
                raise SystemExit(f"--ablate {spec!r}: {value!r} is not a valid {option}") from None
            name = f"victor[{key}={value}]"
            arms.append(Arm(name, True, {option: typed}, compare=(name, "victor")))
        else:
            raise SystemExit(f"--ablate {spec!r}: use KEY=VALUE with KEY in {', '.join(ABLATIONS)} or recon=off")
    return arms


def ladder_comparisons(arms: list[Arm]) -> list[list[str]]:
    """Neighbouring rungs of the dose ladder: [higher dose, lower dose, "positive control"]."""
    doses = sorted(a.stage2_steps for a in arms if a.role == "positive control")
    return [[dose_name(hi), dose_name(lo), "positive control"] for lo, hi in zip(doses, doses[1:])]


def recipe_file(name: str) -> Path:
    return Path(str(resources.files("victor") / "recipes" / "tiny" / name))


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


class Demo:
    def __init__(self, args):
        self.args = args
        self.preset = PRESETS[args.preset]
        self.root = Path(args.output)
        self.seeds = args.seeds or self.preset["seeds"]
        extras = self.preset["extras"]
        self.arms = make_arms(args.ablate + (["pool-init=paper"] if extras else []))
        self.sample_efficiency = extras if args.sample_efficiency is None else args.sample_efficiency
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def log(self, message: str) -> None:
        print(f"[victor demo {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def timed(self, label, fn, *a, **kw):
        """Run `fn`, adding its wall time to `timings[label]` and its CPU time (all threads) to `cpu[label]`."""
        start, cpu = time.time(), time.process_time()
        result = fn(*a, **kw)
        self.timings[label] = self.timings.get(label, 0.0) + time.time() - start
        self.cpu[label] = self.cpu.get(label, 0.0) + time.process_time() - cpu
        return result

    def stage(self, label: str, name: str, changes: dict, parent: str | None) -> Path:
        """Run (or reuse) one stage of the tiny recipe; its directory is named by what determines it."""
        path = recipe_file(name)
        key = digest(name, path.read_text(), changes, parent, self.args.precision)
        out = self.root / "stages" / f"{label}-{key}"
        if (out / "victor_stage.json").exists():
            self.log(f"{label}: reusing {out}")
            return out
        self.log(f"{label}: training -> {out}")
        recipe: Recipe = parse_recipe(path).replace(
            **changes, image_root=str(self.world.images), output_dir=str(out), report_to=["tensorboard"],
            bf16=self.args.precision == "bf16", disable_tqdm=False)
        self.timed(label.split("-")[0], train_stage, recipe)
        return out

    def run(self) -> Path:
        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        started, started_cpu = time.time(), time.process_time()
        self.root.mkdir(parents=True, exist_ok=True)
        p = self.preset
        self.log(f"preset {self.args.preset}: {len(self.arms)} arms x {self.seeds} seeds; output {self.root}")
        world_cfg = WorldConfig(seed=0, n_train=p["n_train"], n_val=p["n_val"])
        self.world, vision, llm = self.timed("world", prepare_world, self.root / "world", world_cfg,
                                             llm_pretrain_steps=p["llm_pretrain"],
                                             vision_pretrain_steps=p["vision_pretrain"])
        # what the tiny LLM answers of the fine-detail questions when it reads the true scene: a ceiling
        ceilings = {f"gqa_fine:{k}": v for k, v in self.timed(
            "world", slot_reader_accuracy, llm, self.world.root, self.world.fine).items()}
        s1 = self.stage("stage1", "stage1.yaml", dict(vision=vision, llm=llm, data_path=str(self.world.stage1),
                                                      max_steps=p["stage1"], seed=0), parent=digest(vars(world_cfg)))
        self.probe_split = split_images(self.world)
        self.shuffled_gqa = shuffled_images(self.world.gqa, self.root / "data" / "gqa-shuffled-images.jsonl")
        runs, efficiency = {}, {}
        for seed in range(self.seeds):
            for arm in self.arms:
                runs[arm.name, seed] = self.run_arm(arm, seed, s1, runs)
                if self.sample_efficiency and arm.name in EFFICIENCY_ARMS:
                    for fraction in FRACTIONS:
                        efficiency.setdefault((arm.name, fraction), []).append(
                            self.stage2_on_share(arm, seed, runs[arm.name, seed]["stage1_5"], fraction))
            if self.sample_efficiency:
                for arm in (a for a in self.arms if a.name in EFFICIENCY_ARMS):
                    efficiency.setdefault((arm.name, 1.0), []).append(runs[arm.name, seed]["stage2"])
        self.timings["total"] = time.time() - started
        self.cpu["total"] = time.process_time() - started_cpu
        results = DemoResults(
            root=self.root, preset=self.args.preset, precision=self.args.precision, seeds=self.seeds,
            arms=[(a.name, a.comprehension) for a in self.arms], world=self.world,
            stage1=s1, runs=runs, timings=self.timings, cpu=self.cpu, command=command_line(),
            roles={a.name: a.role for a in self.arms},
            comparisons=[[*a.compare, a.role] for a in self.arms if a.compare] + ladder_comparisons(self.arms),
            declaration=declaration_commit(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            sample_efficiency={k: [str(d) for d in v] for k, v in efficiency.items()},
            steps={k: p[k] for k in ("stage1", "stage15", "stage2")}, ceilings=ceilings)
        report = self.timed("report", write_report, results)
        self.log(f"done in {self.timings['total']:.0f}s; report: {report}")
        return report

    def run_arm(self, arm: Arm, seed: int, s1: Path, runs: dict) -> dict:
        """Stage 1.5 and stage 2 of one arm and seed, then its evaluation, probes and reconstruction."""
        p, run_seed = self.preset, seed + arm.seed_offset
        if arm.stage2_steps != 1.0:  # the baseline's stage 1.5, then a shorter stage 2 (its own schedule)
            s15 = runs["baseline", seed]["stage1_5"]
            s2 = self.stage(f"stage2-{arm.name}-s{seed}", "stage2.yaml", dict(
                init_from=str(s15), data_path=str(self.world.stage2), max_steps=max(1, round(arm.stage2_steps * p["stage2"])),
                seed=run_seed), parent=str(s15))
        else:
            s15 = self.stage(f"stage1_5-{arm.name}-s{seed}", "stage1_5.yaml", dict(
                init_from=str(s1), data_path=str(self.world.stage15), max_steps=p["stage15"], seed=run_seed,
                pool_size=p["pool_size"], comprehension=arm.comprehension) | arm.options, parent=str(s1))
            s2 = self.stage(f"stage2-{arm.name}-s{seed}", "stage2.yaml", dict(
                init_from=str(s15), data_path=str(self.world.stage2), max_steps=p["stage2"], seed=run_seed),
                parent=str(s15))
        checkpoints = {"after stage 2": s2} | ({} if arm.stage2_steps != 1.0 else {"after stage 1.5": s15})
        run = {"stage1_5": s15, "stage2": s2, "eval": self.evaluate(s2, arm, seed),
               "probe": {name: self.probe(d) for name, d in checkpoints.items()}}
        if arm.role == "arm":
            run["recon"] = self.reconstruct(s15, arm, run_seed)
        return run

    def stage2_on_share(self, arm: Arm, seed: int, s15: Path, fraction: float) -> Path:
        """Stage 2 on a nested random share of its records (same steps), likelihood-scored."""
        data = self.root / "data" / f"stage2-{round(100 * fraction)}pct.json"
        if not data.exists():
            records = json.loads(self.world.stage2.read_text())
            keep = sorted(random.Random(0).sample(range(len(records)), len(records))[:round(fraction * len(records))])
            data.parent.mkdir(parents=True, exist_ok=True)
            data.write_text(json.dumps([records[i] for i in keep]))
        s2 = self.stage(f"stage2-{arm.name}-{round(100 * fraction)}pct-s{seed}", "stage2.yaml", dict(
            init_from=str(s15), data_path=str(data), max_steps=self.preset["stage2"], seed=seed + arm.seed_offset),
            parent=str(s15))
        self.evaluate(s2, arm, seed, benchmarks=LIKELIHOOD, generation=False)
        return s2

    def evaluate(self, model_dir: Path, arm: Arm, seed: int, benchmarks=LIKELIHOOD, generation: bool = True) -> dict:
        """Likelihood scoring of `benchmarks` (+ generation on the open questions); reuses finished runs."""
        data = {"mmbench": self.world.mmbench, "pope": self.world.pope["random"].parent, "gqa": self.world.gqa,
                "gqa_shuffled": self.shuffled_gqa, "gqa_fine": self.world.fine}
        summaries, loaded = {}, []
        jobs = [(b, "likelihood") for b in benchmarks] + ([("gqa", "generate")] if generation else [])
        for bench, scoring in jobs:
            out = model_dir / "eval" / (f"{bench}-likelihood" if scoring == "likelihood" else bench)
            if (out / "summary.json").exists():
                summary = json.loads((out / "summary.json").read_text())
            else:
                self.log(f"eval {bench} ({scoring}): {arm.name} seed {seed}")
                if not loaded:
                    loaded = self.timed("eval", load_model, str(model_dir))
                if scoring == "likelihood":
                    summary = self.timed("eval", run_likelihood, bench.split("_")[0], data[bench], self.world.images,
                                         Scorer(*loaded, batch_size=64), out, batch_size=64, progress=False)
                else:
                    generate = Generator(*loaded)
                    summary = self.timed("eval", run_benchmark, bench, data[bench], self.world.images,
                                         lambda images, prompts: generate(images, prompts, max_new_tokens=4),
                                         out, batch_size=64, progress=False)
            summaries[bench if scoring == "likelihood" else f"{bench}-generate"] = summary
        if "gqa-generate" in summaries:  # one entry for the open questions: generation + the gold log-lik
            generated = summaries.pop("gqa-generate")
            generated["metrics"] |= {k: v for k, v in summaries["gqa"]["metrics"].items() if "gold" in k}
            summaries["gqa"] = generated
        return summaries

    def probe(self, model_dir: Path) -> dict:
        """Linear probes of one checkpoint's visual positions (cached in `probe.json` beside it)."""
        cache = model_dir / "probe.json"
        if cache.exists():
            return json.loads(cache.read_text())
        result = self.timed("probe", probe_model, model_dir, self.world, *self.probe_split)
        for layer in result.values():
            for attr in layer.values():
                attr.pop("alpha", None)
        cache.write_text(json.dumps(result))
        return result

    def reconstruct(self, s15: Path, arm: Arm, seed: int) -> dict:
        """Held-out masked-token reconstruction of a stage-1.5 checkpoint (cached in `recon.json`)."""
        cache = s15 / "recon.json"
        if cache.exists():
            return json.loads(cache.read_text())
        recipe = parse_recipe(recipe_file("stage1_5.yaml"))
        options = {"pool_size": self.preset["pool_size"]} | (arm.options if arm.comprehension else {})
        config = dataclasses.replace(recipe.comprehension, **options)
        result = self.timed("reconstruction", reconstruction, s15, self.world, config, steps=self.preset["stage15"],
                            batch_size=recipe.training.per_device_train_batch_size, seed=seed)
        cache.write_text(json.dumps(result))
        return result


def shuffled_images(questions: Path, out: Path, seed: int = 0) -> Path:
    """The open questions with each image replaced by another one (a seeded cyclic derangement of the
    distinct images: every question gets an image other than its own, the same for every arm)."""
    rows = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()]
    images = sorted({r["image"] for r in rows})
    order = images[:]
    random.Random(seed).shuffle(order)
    swap = {a: b for a, b in zip(order, order[1:] + order[:1])}
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r | {"image": swap[r["image"]]}) + "\n" for r in rows)
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    return out


def declaration_commit() -> dict:
    """The commit that last changed `victor/demo/declared.py` (the primary measure's declaration), its date,
    the run's code commit, and whether the declaration file has uncommitted changes."""
    import subprocess

    path = Path(__file__).with_name("declared.py")

    def git(*a) -> str:
        try:
            return subprocess.run(["git", *a], cwd=path.parent, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    last = git("log", "-1", "--format=%H %cI", "--", path.name).split()
    return {"commit": last[0] if last else None, "date": last[1] if len(last) > 1 else None,
            "head": git("rev-parse", "HEAD") or None,
            "uncommitted": bool(git("status", "--porcelain", "--", path.name)) if last else None}


def command_line() -> str:
    if sys.argv[1:2] == ["demo"]:
        return "victor demo " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    return "victor demo"


def main(argv: list[str] | None = None) -> Path:
    return Demo(parse_args(argv if argv is not None else sys.argv[1:])).run()
