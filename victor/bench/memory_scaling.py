"""`victor bench memory-scaling`: how a stage-1.5 step's peak memory grows with pool size, visual
tokens and batch, against a plain LLaVA step at the same shape, and `victor estimate-memory`
checked against a measured peak.

Every configuration (one shape, one variant) runs in a fresh subprocess, so no allocator state of
an earlier configuration hides a later one's growth. In that process:

1. the model, the batch and the step are built (`suite.build`), numba's matcher is compiled on a
   toy cost, freed heap pages go back to the system (`malloc_trim`);
2. **RSS column**: the peak resident set (VmHWM, reset by `clear_refs`) of the second, steady step
   above the process's RSS before the first one: the AdamW state (made by the first step, after
   its activation peak, which is why the first step is not the one measured), the gradients, the
   activations and the allocator's slack: everything a training step holds above the weights;
3. **tensor column**: a second (steady) step under torch's profiler with memory events: the most
   tensor bytes alive at once, above those alive before the step (the first step's gradients are
   dropped just before it, so the step re-makes them in view), plus the AdamW state. Allocator-
   independent: torch has no CPU allocator statistics, the profiler's allocation events are the
   substitute.

The subprocess runs with a fixed glibc mmap threshold (MALLOC_MMAP_THRESHOLD_=131072): every large
block is its own mapping, given back on free, so the RSS column follows the live bytes. With glibc's
default (a threshold that rises after the first frees) freed heap pages are reused and the growth of
a step reads low or ~0: measured at the base point (first step), stage 1.5 read 0.5 MiB *below* plain.

One factor moves at a time around a base point; a least-squares line per factor (numpy.polyfit)
gives MiB per unit for stage 1.5, plain and their difference.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time

from victor.bench.doc_section import write_section

MIB = 2**20
# small widths so that a sweep takes minutes on two cores; the slopes of what stage 1.5 adds
# (pool rows x hidden, visual tokens x pool per image, the head) scale with `hidden` as documented
BASE = dict(patch=14, image_size=336, vision_hidden=64, vision_layers=1, hidden=256, layers=2, pool=2048, batch=2,
            answer_repeat=4)
SWEEPS = {"pool": (512, 1024, 2048, 4096, 8192), "visual": (64, 144, 256, 576, 729), "batch": (1, 2, 4)}
UNITS = {"pool": (1000, "1000 pool rows"), "visual": (1, "visual token"), "batch": (1, "batch item")}
STAGE15 = "hungarian/causal/linear"


def shape_at(base: dict, factor: str | None = None, value: int | None = None) -> dict:
    """`base` with one factor moved: pool rows, visual tokens per image (a square number: the image
    side becomes patch x sqrt(tokens)) or batch."""
    s = dict(base)
    if factor == "pool":
        s["pool"] = value
    elif factor == "batch":
        s["batch"] = value
    elif factor == "visual":
        side = math.isqrt(value)
        if side * side != value:
            raise ValueError(f"visual tokens {value}: must be a square number (side x side patches)")
        s["image_size"] = side * s["patch"]
    return s


def visual_tokens(s: dict) -> int:
    return (s["image_size"] // s["patch"]) ** 2


# -- inside the fresh process -----------------------------------------------------------------
def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def tensor_peak_delta(fn) -> int:
    """Most tensor bytes alive at once while `fn` runs, above those alive when it starts (CPU
    allocation and free events of torch's profiler, replayed in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure(config: dict) -> dict:
    """One configuration: build, then the RSS peak of the first step and the tensor peak of a steady one."""
    import numpy as np
    import torch

    from victor.bench.suite import _rss_peak_reset, _status, build
    from victor.model import lap

    torch.set_num_threads(config.get("threads", 1))
    s, variant = config["shape"], config["variant"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[config.get("dtype", "fp32")]
    setup = build(s, () if variant == "plain" else (tuple(variant.split("/")),))
    step = setup.steps[variant]
    module, opt = step.module, step.optimizer
    lap.solve(np.random.default_rng(0).random((1, 2, 3), dtype=np.float32))  # numba: compiled / loaded now
    params = list(module.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in params) + sum(
        b.numel() * b.element_size() for b in module.buffers())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    gc.collect()
    _trim()
    base = _status("VmRSS")
    step(dtype)  # the first step makes the AdamW state, after its activation peak: not a steady step
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    adam = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if torch.is_tensor(t))
    # drop the gradients (the next step's zero_grad would); the profiler below reports no free of a
    # block allocated before it started, so the profiled step must re-make them in view
    opt.zero_grad(set_to_none=True)
    gc.collect()
    _trim()
    _rss_peak_reset()
    start = time.perf_counter()
    step(dtype)
    seconds = time.perf_counter() - start
    rss = _status("VmHWM") - base
    opt.zero_grad(set_to_none=True)
    delta = tensor_peak_delta(lambda: step(dtype))
    state = grads + adam
    return {"variant": variant, "dtype": config.get("dtype", "fp32"), "pool": s["pool"], "visual": setup.n_visual,
            "batch": s["batch"], "seq": setup.seq, "hidden": s["hidden"], "layers": s["layers"],
            "trainable": trainable, "weights_mib": weight_bytes / MIB, "state_mib": state / MIB,
            "rss_mib": rss / MIB, "tensor_mib": (adam + delta) / MIB, "baseline_mib": base / MIB,
            "seconds": seconds}


# -- the parent -------------------------------------------------------------------------------
def run_config(shape: dict, variant: str, dtype: str = "fp32", threads: int = 1, timeout: int = 600) -> dict:
    """`measure` in a fresh Python process (threads pinned, offline)."""
    import victor

    root = os.path.dirname(os.path.dirname(os.path.abspath(victor.__file__)))
    # a fixed mmap threshold: every large block is its own mapping, returned on free, so the resident
    # set follows the live bytes (glibc's default raises the threshold after the first frees and then
    # reuses freed heap pages: a step's growth then reads as ~0, or stage 1.5 below plain)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               MALLOC_MMAP_THRESHOLD_="131072",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    config = {"shape": shape, "variant": variant, "dtype": dtype, "threads": threads}
    proc = subprocess.run([sys.executable, "-m", "victor.bench.memory_scaling", json.dumps(config)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"memory measurement {variant} at {shape} failed (rc {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def sweep(base: dict = BASE, sweeps: dict = SWEEPS, variants=("plain", STAGE15), dtype: str = "fp32",
          threads: int = 1, log=print) -> list[dict]:
    """Rows {factor, value, variant, ...measurement}; the base point is measured once and shared."""
    cache, rows = {}, []
    for factor, values in sweeps.items():
        for value in values:
            s = shape_at(base, factor, value)
            for variant in variants:
                key = (json.dumps(s, sort_keys=True), variant)
                if key not in cache:
                    cache[key] = run_config(s, variant, dtype, threads)
                    m = cache[key]
                    log(f"{factor}={value:<5} {variant:24s} rss {m['rss_mib']:7.1f} MiB  tensor {m['tensor_mib']:7.1f} "
                        f"MiB  ({m['seconds']:.1f} s/step, seq {m['seq']})")
                rows.append({"factor": factor, "value": value, **cache[key]})
    return rows


def fit_slopes(rows: list[dict], column: str = "tensor_mib", stage15: str = STAGE15) -> list[dict]:
    """Per factor: least-squares MiB per unit for stage 1.5, plain and their per-point difference."""
    import numpy as np

    out = []
    for factor in dict.fromkeys(r["factor"] for r in rows):
        unit, label = UNITS[factor]
        by = {v: {r["variant"]: r[column] for r in rows if r["factor"] == factor and r["value"] == v}
              for v in dict.fromkeys(r["value"] for r in rows if r["factor"] == factor)}
        xs = [v for v in by if "plain" in by[v] and stage15 in by[v]]
        if len(xs) < 2:
            continue
        x = np.array(xs, dtype=float) / unit
        fits = {}
        for name, ys in (("stage15", [by[v][stage15] for v in xs]), ("plain", [by[v]["plain"] for v in xs]),
                         ("added", [by[v][stage15] - by[v]["plain"] for v in xs])):
            slope, intercept = np.polyfit(x, np.array(ys), 1)
            residual = float(np.max(np.abs(np.polyval([slope, intercept], x) - np.array(ys))))
            fits[name] = (float(slope), float(intercept), residual)
        added = [by[v][stage15] - by[v]["plain"] for v in xs]  # first and last segment: a kink shows
        segments = ((added[1] - added[0]) / (x[1] - x[0]), (added[-1] - added[-2]) / (x[-1] - x[-2]))
        out.append({"factor": factor, "unit": label, "column": column, "points": len(xs), **fits,
                    "added_segments": tuple(float(s) for s in segments)})
    return out


def expected_added_slopes(base: dict, mask_ratio: float = 0.75) -> dict:
    """Back-of-envelope MiB of what stage 1.5 adds, fp32 (for the doc). The pool's two AdamW moments
    are alive through the step; its gradient is made at the end of backward, after the activation
    peak. `matching.euclidean_cost` holds three [images, masked, pool] fp32 matrices at once, early
    in the forward: the step's peak once that exceeds the LLM's activation peak."""
    h, b, n = base["hidden"], base["batch"], visual_tokens(base)
    masked = round(mask_ratio * n)
    return {"AdamW moments per 1000 pool rows": 2 * 4 * h * 1000 / MIB,
            "cost-matrix transient (3 matrices) per 1000 pool rows": 3 * b * masked * 1000 * 4 / MIB,
            f"cost-matrix transient at pool {base['pool']}": 3 * b * masked * base["pool"] * 4 / MIB}


def estimate_check(base: dict, measured: dict, variant: str = STAGE15) -> list[dict]:
    """`victor estimate-memory`'s single-process prediction (one GPU, ZeRO 0 = one process holding
    everything, fp32 weights, gradients and Adam state) at the bench's shape, against the measured
    totals (weights + step peak). `measured` maps (variant, dtype) -> a `measure` row."""
    from victor.bench.suite import save_shape_backbones
    from victor.train.memory import estimate

    matching, attention, head = variant.split("/")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vision, llm = save_shape_backbones(tmp, base)
        for (name, dtype), m in measured.items():
            recipe = os.path.join(tmp, f"{name.replace('/', '_')}.yaml")
            stage = ("stage: '2'\n" if name == "plain" else
                     f"stage: '1.5'\npool_size: {base['pool']}\nmatching: {matching}\nattention: {attention}\n"
                     f"recon_head: {head}\n")
            with open(recipe, "w") as f:
                f.write(f"{stage}vision: {vision}\nllm: {llm}\ndata_path: x.json\noutput_dir: {tmp}/out\n"
                        f"per_device_train_batch_size: {m['batch']}\nmax_length: {m['seq']}\n")
            e = estimate(recipe, gpus=1, zero=0, micro_batch=m["batch"], seq_len=m["seq"])
            if e["n_visual"] != m["visual"]:
                raise AssertionError(f"estimate sees {e['n_visual']} visual tokens, the bench {m['visual']}")
            by = e["bytes"]
            predicted = by["total_no_checkpointing"] / MIB
            row = {"variant": name, "dtype": dtype, "predicted_mib": predicted,
                   "pred_weights_mib": by["weights"] / MIB,
                   "pred_state_mib": (by["gradients"] + by["optimizer"]) / MIB,
                   "pred_activations_mib": (by["activations_no_checkpointing"] + by["logits"]) / MIB,
                   "weights_mib": m["weights_mib"], "state_mib": m["state_mib"],
                   "rss_total_mib": m["weights_mib"] + m["rss_mib"],
                   "tensor_total_mib": m["weights_mib"] + m["tensor_mib"],
                   "tensor_activations_mib": m["tensor_mib"] - m["state_mib"]}
            row["ratio_rss"] = predicted / row["rss_total_mib"]
            row["ratio_tensor"] = predicted / row["tensor_total_mib"]
            rows.append(row)
    return rows


# -- tables -----------------------------------------------------------------------------------
def sweep_table(rows: list[dict], stage15: str = STAGE15) -> list[str]:
    lines = ["| factor | value | visual/img | seq | stage 1.5 RSS MiB | plain RSS MiB | added RSS MiB | "
             "stage 1.5 tensor MiB | plain tensor MiB | added tensor MiB |", "|" + "---|" * 10]
    points = {}
    for r in rows:
        points.setdefault((r["factor"], r["value"]), {})[r["variant"]] = r
    for (factor, value), v in points.items():
        a, p = v.get(stage15), v.get("plain")
        if not (a and p):
            continue
        lines.append(f"| {factor} | {value} | {a['visual']} | {a['seq']} | {a['rss_mib']:.1f} | {p['rss_mib']:.1f} | "
                     f"{a['rss_mib'] - p['rss_mib']:.1f} | {a['tensor_mib']:.1f} | {p['tensor_mib']:.1f} | "
                     f"{a['tensor_mib'] - p['tensor_mib']:.1f} |")
    return lines


def slope_table(fits: list[dict]) -> list[str]:
    lines = ["| factor | column | points | MiB per | stage 1.5 | plain | added (1.5 - plain) | added: intercept, "
             "max residual MiB | added: first, last segment slope |", "|" + "---|" * 9]
    for f in fits:
        lines.append(f"| {f['factor']} | {f['column'].replace('_mib', '')} | {f['points']} | {f['unit']} | "
                     f"{f['stage15'][0]:.3f} | {f['plain'][0]:.3f} | **{f['added'][0]:.3f}** | "
                     f"{f['added'][1]:.1f}, {f['added'][2]:.1f} | {f['added_segments'][0]:.3f}, "
                     f"{f['added_segments'][1]:.3f} |")
    return lines


def estimate_table(rows: list[dict]) -> list[str]:
    lines = ["| variant | dtype | predicted MiB | measured MiB (weights + RSS peak) | predicted / measured | "
             "measured MiB (weights + tensor peak) | predicted / measured | weights pred / meas | "
             "grads + Adam pred / meas | activations + logits pred / meas (tensor) |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['dtype']} | {r['predicted_mib']:.1f} | {r['rss_total_mib']:.1f} | "
                     f"{r['ratio_rss']:.2f} | {r['tensor_total_mib']:.1f} | {r['ratio_tensor']:.2f} | "
                     f"{r['pred_weights_mib']:.1f} / {r['weights_mib']:.1f} | "
                     f"{r['pred_state_mib']:.1f} / {r['state_mib']:.1f} | "
                     f"{r['pred_activations_mib']:.1f} / {r['tensor_activations_mib']:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="victor bench memory-scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", type=int, nargs="*", default=list(SWEEPS["pool"]))
    p.add_argument("--visual", type=int, nargs="*", default=list(SWEEPS["visual"]),
                   help="visual tokens per image (square numbers)")
    p.add_argument("--batches", type=int, nargs="*", default=list(SWEEPS["batch"]))
    for key in ("pool", "batch", "hidden", "layers", "vision_hidden", "vision_layers", "patch", "answer_repeat"):
        p.add_argument(f"--base-{key.replace('_', '-')}", type=int, default=BASE[key])
    p.add_argument("--base-visual", type=int, default=visual_tokens(BASE))
    p.add_argument("--variant", default=STAGE15, help="stage-1.5 variant matching/attention/head")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-estimate", action="store_true", help="skip the estimate-memory check")
    p.add_argument("--estimate-dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--output", default="docs/performance.md", help="file whose memory-scaling section is "
                   "(re)written; '' writes nothing")
    args = p.parse_args(argv)
    start = time.perf_counter()
    base = {k: getattr(args, f"base_{k}") for k in BASE if k != "image_size"}
    base = shape_at({**base, "image_size": 0}, "visual", args.base_visual)
    sweeps = {"pool": args.pools, "visual": args.visual, "batch": args.batches}
    sweeps = {k: v for k, v in sweeps.items() if v}
    variants = ("plain", args.variant)
    rows = sweep(base, sweeps, variants, "fp32", args.threads)
    fits = fit_slopes(rows, "tensor_mib", args.variant) + fit_slopes(rows, "rss_mib", args.variant)
    checks = []
    if not args.no_estimate:
        measured = {}
        for dtype in args.estimate_dtypes:
            for variant in variants:
                hit = next((r for r in rows if dtype == "fp32" and r["variant"] == variant and r["pool"] == base["pool"]
                            and r["batch"] == base["batch"] and r["visual"] == visual_tokens(base)), None)
                measured[variant, dtype] = hit or run_config(base, variant, dtype, args.threads)
        checks = estimate_check(base, measured, args.variant)
    elapsed = time.perf_counter() - start
    from victor.bench.suite import cpu_name

    command = "victor bench memory-scaling" + (" " + " ".join(argv) if argv else "")
    out = ["## Memory scaling: stage-1.5 step vs plain step", "",
           f"Written by `{command}` in {elapsed / 60:.1f} min on: {cpu_name()}, {args.threads} thread(s) per "
           f"measurement. Each configuration in a fresh process; forward + backward + AdamW, fp32. Base point: "
           f"pool {base['pool']}, {visual_tokens(base)} visual tokens per image ({base['image_size']} px / "
           f"{base['patch']} px patches), batch {base['batch']}; LLM hidden {base['hidden']} x {base['layers']} "
           f"layers, vision hidden {base['vision_hidden']} x {base['vision_layers']} layer(s) (frozen), stage 1.5 = "
           f"`{args.variant}`, mask ratio 0.75. **RSS**: peak resident set of a steady (second) step above the RSS "
           "before the first step: AdamW state, gradients, activations, allocator slack, i.e. everything above "
           "the weights (glibc with a fixed mmap threshold, so freed blocks leave the resident set). "
           "**tensor**: most tensor bytes alive at once in a steady step (torch profiler allocation events) "
           "+ the AdamW state. `added` = stage 1.5 - plain at the same point.", ""]
    out += sweep_table(rows, args.variant)
    out += ["", "Least-squares slopes (numpy.polyfit, one factor at a time):", ""] + slope_table(fits)
    out += ["", "Back-of-envelope for what stage 1.5 adds at the base point (fp32): "
            + "; ".join(f"{k} {v:.2f} MiB" for k, v in expected_added_slopes(base).items()) + "."]
    if checks:
        out += ["", "### `victor estimate-memory` vs measured, one process", "",
                "The estimate at the base shape (`train.memory.estimate(recipe, gpus=1, zero=0)`: one process "
                "holding fp32 weights, gradients and Adam state; activations without checkpointing) against "
                "the measured weights + step peak of one process.", ""] + estimate_table(checks)
    text = "\n".join(out) + "\n"
    print(text)
    if args.output:
        write_section(args.output, text)
    return {"rows": rows, "fits": fits, "checks": checks, "text": text}


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        print("RESULT " + json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
    else:
        main(sys.argv[1:])
