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
import shlex
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from victor.config import ComprehensionConfig, Recipe, parse_recipe
from victor.demo.report import DemoResults, write_report
from victor.eval.run import run_benchmark
from victor.infer import Generator
from victor.tiny.prepare import prepare_world
from victor.tiny.scenes import WorldConfig
from victor.train.run import train_stage

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

    def seconds(dtype) -> float:
        x = torch.randn(size, size).to(dtype)
        x @ x
        start = time.perf_counter()
        for _ in range(repeats):
            x @ x
        return time.perf_counter() - start

    return "bf16" if seconds(torch.bfloat16) < 0.8 * seconds(torch.float32) else "fp32"


def make_arms(ablations: list[str]) -> list[Arm]:
    """`--ablate KEY=VALUE` -> an arm with one stage-1.5 option changed (typed like its field)."""
    defaults = ComprehensionConfig()
    arms = [Arm("baseline", False), Arm("victor", True)]
    for spec in ablations:
        key, _, value = spec.partition("=")
        if key == "recon" and value == "off":
            arms.append(Arm("victor[recon=off]", True, {"recon_weight": 0.0}))
        elif key in ABLATIONS and value:
            option = ABLATIONS[key]
            try:
                typed = type(getattr(defaults, option))(value)
            except ValueError:
                raise SystemExit(f"--ablate {spec!r}: {value!r} is not a valid {option}") from None
            arms.append(Arm(f"victor[{key}={value}]", True, {option: typed}))
        else:
            raise SystemExit(f"--ablate {spec!r}: use KEY=VALUE with KEY in {', '.join(ABLATIONS)} or recon=off")
    return arms


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
        self.arms = make_arms(args.ablate)
        self.timings: dict[str, float] = {}

    def log(self, message: str) -> None:
        print(f"[victor demo {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def timed(self, label, fn, *a, **kw):
        start = time.time()
        result = fn(*a, **kw)
        self.timings[label] = self.timings.get(label, 0.0) + time.time() - start
        return result

    def stage(self, label: str, name: str, changes: dict, parent: str | None) -> Path:
        """Run (or reuse) one stage of the tiny recipe; its directory is named by what determines it."""
        path = recipe_file(name)
        key = digest(name, path.read_text(), changes, parent)
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
        started = time.time()
        self.root.mkdir(parents=True, exist_ok=True)
        p = self.preset
        self.log(f"preset {self.args.preset}: {len(self.arms)} arms x {self.seeds} seeds; output {self.root}")
        world_cfg = WorldConfig(seed=0, n_train=p["n_train"], n_val=p["n_val"])
        self.world, vision, llm = self.timed("world", prepare_world, self.root / "world", world_cfg,
                                             llm_pretrain_steps=p["llm_pretrain"],
                                             vision_pretrain_steps=p["vision_pretrain"])
        s1 = self.stage("stage1", "stage1.yaml", dict(vision=vision, llm=llm, data_path=str(self.world.stage1),
                                                      max_steps=p["stage1"], seed=0), parent=digest(vars(world_cfg)))
        runs = {}
        for seed in range(self.seeds):
            for arm in self.arms:
                s15 = self.stage(f"stage1_5-{arm.name}-s{seed}", "stage1_5.yaml", dict(
                    init_from=str(s1), data_path=str(self.world.stage15), max_steps=p["stage15"], seed=seed,
                    pool_size=p["pool_size"], comprehension=arm.comprehension) | arm.options, parent=str(s1))
                s2 = self.stage(f"stage2-{arm.name}-s{seed}", "stage2.yaml", dict(
                    init_from=str(s15), data_path=str(self.world.stage2), max_steps=p["stage2"], seed=seed),
                    parent=str(s15))
                runs[arm.name, seed] = {"stage1_5": s15, "stage2": s2, "eval": self.evaluate(s2, arm, seed)}
        self.timings["total"] = time.time() - started
        results = DemoResults(
            root=self.root, preset=self.args.preset, precision=self.args.precision, seeds=self.seeds,
            arms=[(a.name, a.comprehension) for a in self.arms], world=self.world,
            stage1=s1, runs=runs, timings=self.timings, command=command_line())
        report = self.timed("report", write_report, results)
        self.log(f"done in {self.timings['total']:.0f}s; report: {report}")
        return report

    def evaluate(self, model_dir: Path, arm: Arm, seed: int) -> dict:
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


def command_line() -> str:
    if sys.argv[1:2] == ["demo"]:
        return "victor demo " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    return "victor demo"


def main(argv: list[str] | None = None) -> Path:
    return Demo(parse_args(argv if argv is not None else sys.argv[1:])).run()
