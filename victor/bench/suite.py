"""`victor bench all|realistic|memory`: the step at the realistic shape, the LM loss's memory, the
matcher, and docs/performance.md.

Every timing table is taken in one process with threads pinned: a warm-up step per variant
(excluded), then >= 3 rounds in which the variants run in a shuffled order; each ratio is taken
within a round (stage 1.5 / plain of the same round) and reported as the median with its
spread (min..max) over the rounds, so a 5% change can be told from the machine's noise.

The realistic shape (issue 26; the data issue's rate bench reuses it): batch 4, 336 px images in
14 px patches (576 visual tokens), ~700-token sequences, LLM hidden 512 x 8 layers, pool 2048,
AdamW over LLM + projector (+ pool + head), the vision tower frozen.
"""
from __future__ import annotations

import os
import platform
import random
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import torch

SHAPES = {
    "toy": dict(batch=8, image_size=96, patch=8, vision_hidden=64, vision_layers=2, hidden=256, layers=4, pool=512,
                answer_repeat=4),
    "realistic": dict(batch=4, image_size=336, patch=14, vision_hidden=64, vision_layers=1, hidden=512, layers=8,
                      pool=2048, answer_repeat=12),
}
# (matching, attention, head) -> target stage 1.5 / plain at the realistic shape
VARIANTS = {
    ("nearest", "causal", "linear"): 1.03,
    ("hungarian", "causal", "linear"): 1.05,
    ("hungarian", "bidirectional-visual", "transformer"): 1.10,
}
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}


# -- the machine -------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = re.search(r"Model name:\s*(.+)", out).group(1).strip()
        flags = re.search(r"Flags:\s*(.+)", out).group(1).split()
        native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
        return f"{name}, {os.cpu_count()} CPUs, bf16: {', '.join(native) or 'no native support'}"
    except Exception:  # noqa: BLE001
        return platform.processor() or "unknown CPU"


def gemm_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """Measured GFLOP/s of an n x n x n matrix multiply in `dtype` (best of `repeats`)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n ** 3 / best / 1e9


def _rss_peak_reset() -> int:
    """Reset the process's peak resident set (Linux clear_refs 5); returns the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_bytes(fn) -> int:
    """Peak resident memory above the starting point while `fn` runs."""
    base = _rss_peak_reset()
    fn()
    return _status("VmHWM") - base


# -- the step ---------------------------------------------------------------------------------
@dataclass
class Setup:
    model: object
    batch: dict
    steps: dict = field(default_factory=dict)  # variant name -> callable(one training step)
    n_visual: int = 0
    seq: int = 0


ANSWER = "a red circle is at the top left of the picture and a blue square below it . "


def save_shape_backbones(directory: str, s: dict) -> tuple[str, str]:
    """The bench's tiny backbones for shape `s` saved under `directory` -> (vision dir, LLM dir)."""
    from victor.data.templates import TEMPLATE_TEXT
    from victor.tiny.backbones import save_backbones
    from victor.tiny.world import build_tokenizer

    words = [TEMPLATE_TEXT, "describe the image in detail . " + ANSWER]
    return save_backbones(directory, build_tokenizer(words), image_size=s["image_size"], patch_size=s["patch"],
                          vision_hidden=s["vision_hidden"], vision_layers=s["vision_layers"],
                          llm_hidden=s["hidden"], llm_layers=s["layers"])


def build(shape: str | dict, variants=tuple(VARIANTS)) -> Setup:
    """The model, one batch and a training step per variant (`plain` always) at a named shape of
    SHAPES or a dict with the same keys. Each step function carries its `optimizer` and `module`."""
    from PIL import Image

    from victor.config import ComprehensionConfig
    from victor.data.collate import LlavaCollator
    from victor.data.llava import Sample
    from victor.model.assemble import build_model
    from victor.model.comprehension import VisualComprehension

    s = SHAPES[shape] if isinstance(shape, str) else shape
    torch.manual_seed(0)
    answer = ANSWER
    with tempfile.TemporaryDirectory() as tmp:
        vision, llm = save_shape_backbones(tmp, s)
        model, processor = build_model(vision, llm)
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    collator = LlavaCollator(processor, model.config.image_seq_length, "chat", max_length=8192, image_keys=True)
    samples = [Sample(str(i), [{"role": "user", "content": "<image>\ndescribe the image in detail ."},
                               {"role": "assistant", "content": answer * s["answer_repeat"]}],
                      [Image.effect_noise((s["image_size"],) * 2, 40 + i).convert("RGB")], index=i)
               for i in range(s["batch"])]
    batch = collator(samples)
    plain_batch = {k: v for k, v in batch.items() if k != "image_keys"}
    setup = Setup(model, batch, n_visual=model.config.image_seq_length, seq=batch["input_ids"].shape[1])

    def make(module, call):
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)

        def step(dtype=torch.float32):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = call()
            loss.backward()
            opt.step()
        step.optimizer, step.module = opt, module
        return step

    model.train()
    setup.steps["plain"] = make(model, lambda: model(**plain_batch).loss)
    for matching, attention, head in variants:
        vc = VisualComprehension(model, ComprehensionConfig(pool_size=s["pool"], pool_init="tokens", matching=matching,
                                                            attention=attention, recon_head=head)).train()
        vc.seed_pool(vc.project_images(batch["pixel_values"]), torch.Generator().manual_seed(0))
        setup.steps[f"{matching}/{attention}/{head}"] = make(vc, lambda vc=vc: vc(**batch)["loss"])
    return setup


def step_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def count_syncs(step) -> int:
    from victor.bench.syncs import VICTOR, SyncCounter

    with SyncCounter() as counter:
        step()
    # victor's step code only: syncs of torch's optimizer and autograd are attributed to this harness
    return counter.count(tuple(os.path.join(VICTOR, d) + os.sep for d in ("model", "train", "data")))


def bench_steps(shape: str, dtypes=("fp32", "bf16"), rounds: int = 3, threads: int = 2, peaks=None,
                variants=tuple(VARIANTS), seed: int = 0) -> dict:
    """Median seconds per step and stage-1.5/plain ratios with their spread, per dtype."""
    torch.set_num_threads(threads)
    setup = build(shape, variants)
    names = list(setup.steps)
    kinds = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for d in dtypes:  # warm-up, excluded
        for name in names:
            setup.steps[name](kinds[d])
    flops = {name: step_flops(setup.steps[name]) for name in names}
    syncs = {name: count_syncs(setup.steps[name]) for name in names}
    memory = {name: peak_bytes(setup.steps[name]) for name in names}
    times = {(d, n): [] for d in dtypes for n in names}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = [(d, n) for d in dtypes for n in names]
        rng.shuffle(order)
        for d, n in order:
            start = time.perf_counter()
            setup.steps[n](kinds[d])
            times[d, n].append(time.perf_counter() - start)
    rows = []
    for d in dtypes:
        for n in names:
            ratios = [t / p for t, p in zip(times[d, n], times[d, "plain"])]
            seconds = statistics.median(times[d, n])
            row = dict(shape=shape, dtype=d, variant=n, seconds=seconds, ratio=statistics.median(ratios),
                       lo=min(ratios), hi=max(ratios), gflops=flops[n] / 1e9, syncs=syncs[n],
                       peak_mib=memory[n] / 2**20)
            if peaks:
                row["peak_fraction"] = flops[n] / seconds / 1e9 / peaks[d]
            target = next((t for v, t in VARIANTS.items() if "/".join(v) == n), None)
            row["target"] = target if shape == "realistic" else None
            rows.append(row)
    return {"rows": rows, "n_visual": setup.n_visual, "seq": setup.seq, "batch": SHAPES[shape]["batch"],
            "setup": setup}


def profile_top(step, dtype, top: int = 8) -> list[tuple[str, float, float]]:
    """(op, self ms, share of the step) of the step's most expensive ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(dtype)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e3, e.self_cpu_time_total / total, e.key in GEMM_OPS)
            for e in ranked[:top]]


# -- the LM loss's memory ---------------------------------------------------------------------
def bench_loss_memory(vocabs=(32_000, 152_064), tokens: int = 2800, hidden: int = 512, threads: int = 2) -> list[dict]:
    """Peak resident memory (above the start) of the LM loss forward + backward: plain vs chunked."""
    from torch import nn
    from transformers.loss.loss_utils import ForCausalLMLoss

    from victor.model.lm_loss import chunked_lm_loss, default_chunk

    torch.set_num_threads(threads)
    rows = []
    for vocab in vocabs:
        head = nn.Linear(hidden, vocab, bias=False)
        h = torch.randn(1, tokens, hidden, requires_grad=True)
        labels = torch.randint(0, vocab, (1, tokens))

        def plain():
            ForCausalLMLoss(head(h), labels, vocab_size=vocab).backward()

        def chunked():
            chunked_lm_loss(h, head, labels).backward()

        result = {"vocab": vocab, "tokens": tokens, "hidden": hidden, "chunk": default_chunk(vocab),
                  "logits_mib": tokens * vocab * 4 / 2**20}
        for name, fn in (("plain", plain), ("chunked", chunked)):
            head.zero_grad(set_to_none=True)
            h.grad = None
            fn()  # warm-up: the allocator's first growth
            head.weight.grad, h.grad = None, None
            start = time.perf_counter()
            result[f"{name}_mib"] = peak_bytes(fn) / 2**20
            result[f"{name}_s"] = time.perf_counter() - start
            head.weight.grad, h.grad = None, None
        rows.append(result)
        del head, h
    return rows


# -- the report -------------------------------------------------------------------------------
def _step_table(result: dict) -> list[str]:
    lines = ["| dtype | variant | s/step | x plain (median) | spread over rounds | target | met | GFLOP/step | "
             "% of GEMM peak | syncs in victor/step | peak RSS MiB |", "|" + "---|" * 11]
    for r in result["rows"]:
        target = f"<= {r['target']:.2f}" if r.get("target") else "-"
        met = "-" if not r.get("target") else ("yes" if r["ratio"] <= r["target"] else "**no**")
        frac = f"{100 * r['peak_fraction']:.0f}%" if "peak_fraction" in r else "-"
        lines.append(f"| {r['dtype']} | {r['variant']} | {r['seconds']:.3f} | {r['ratio']:.3f} | "
                     f"{r['lo']:.3f}..{r['hi']:.3f} | {target} | {met} | {r['gflops']:.1f} | {frac} | {r['syncs']} | "
                     f"{r['peak_mib']:.0f} |")
    return lines


def write_report(path: str, machine: str, peaks: dict, steps: list[dict], profile: dict, loss_rows: list[dict],
                 matching_rows: list[dict], command: str, elapsed: float) -> str:
    out = ["# Performance", "",
           f"Written by `{command}` in {elapsed / 60:.1f} min on: {machine}; torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads. Ratios are within-run (variants interleaved in a shuffled order, "
           "warm-up excluded); the spread is min..max of the per-round ratios. Regenerate with `victor bench all` "
           "(`--quick`: fewer rounds and no toy shape).", "",
           "**GPU column: empty.** No GPU was available when this page was written. `python tools/gpu_check.py` on "
           "one lent GPU prints syncs/step, step time, peak memory and MFU for the same stage-1.5 step; paste its "
           "table here.", "",
           "## GEMM peak (measured, 1024^3)", "",
           "| dtype | GFLOP/s |", "|---|---|"] + [f"| {d} | {v:.0f} |" for d, v in peaks.items()]
    for result in steps:
        rows = result["rows"]
        out += ["", f"## Training step, {rows[0]['shape']} shape", "",
                f"batch {result['batch']} x {result['seq']} tokens ({result['n_visual']} visual per image), "
                "forward + backward + AdamW. `syncs in victor/step`: host synchronisations in victor's files "
                "(`victor.bench.syncs`); the one Hungarian copy of the costs to the solver is the only one allowed.",
                ""] + _step_table(result)
    for (shape, dtype, variant), top in profile.items():
        out += ["", f"## Profiler, {shape} shape, {dtype}, {variant}: top ops by self CPU time", "",
                "| op | self ms | share | GEMM |", "|---|---|---|---|"]
        out += [f"| `{k}` | {ms:.1f} | {100 * share:.0f}% | {'yes' if g else ''} |" for k, ms, share, g in top]
    out += ["", "## LM loss memory: plain (full-vocabulary fp32 logits) vs chunked linear + cross-entropy", "",
            "Peak resident memory above the start of one forward + backward of the loss alone "
            "(`victor.model.lm_loss`).", "",
            "| vocab | tokens | hidden | chunk | logits MiB | plain MiB | chunked MiB | plain s | chunked s |",
            "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['vocab']} | {r['tokens']} | {r['hidden']} | {r['chunk']} | {r['logits_mib']:.0f} | "
            f"{r['plain_mib']:.0f} | {r['chunked_mib']:.0f} | {r['plain_s']:.2f} | {r['chunked_s']:.2f} |"
            for r in loss_rows]
    if matching_rows:
        from victor.bench.matching import EXPLAIN_LEGEND, format_explain, format_table

        out += ["", "## Matching: exact batched solver vs scipy per image", "", "```", format_table(matching_rows),
                "```", "", "Target: published (`paper`) init >= 10x scipy.", "",
                "What the solver did (`victor bench matching --explain`): " + EXPLAIN_LEGEND + ".", "",
                "```", format_explain(matching_rows), "```"]
    text = "\n".join(out) + "\n"
    from victor.bench.doc_section import existing_section

    kept = existing_section(path)  # `victor bench memory-scaling` writes its own section: keep it
    text += ("\n" + kept) if kept else ""
    with open(path, "w") as f:
        f.write(text)
    return text


def run_all(quick: bool, threads: int, output: str, rounds: int | None = None) -> str:
    start = time.perf_counter()
    torch.set_num_threads(threads)
    peaks = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    print(f"GEMM peak: fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)
    rounds = rounds or (3 if quick else 5)
    steps, profile = [], {}
    for shape in (("realistic",) if quick else ("toy", "realistic")):
        result = bench_steps(shape, rounds=rounds, threads=threads, peaks=peaks)
        for r in result["rows"]:
            print(f"{shape:9s} {r['dtype']} {r['variant']:45s} {r['seconds']:.3f}s x{r['ratio']:.3f} "
                  f"({r['lo']:.3f}..{r['hi']:.3f}) syncs {r['syncs']} peak {r['peak_mib']:.0f} MiB", flush=True)
        if shape == "realistic":
            name = "hungarian/causal/linear"
            for dtype in ("bf16",) if quick else ("fp32", "bf16"):
                profile[shape, dtype, name] = profile_top(result["setup"].steps[name],
                                                          torch.bfloat16 if dtype == "bf16" else torch.float32)
        result.pop("setup")
        steps.append(result)
    loss_rows = bench_loss_memory(tokens=1400 if quick else 2800, threads=threads)
    for r in loss_rows:
        print(f"loss memory vocab {r['vocab']}: plain {r['plain_mib']:.0f} MiB, chunked {r['chunked_mib']:.0f} MiB",
              flush=True)
    from victor.bench.matching import run_benchmark

    matching_rows = run_benchmark(images=4 if quick else 16, threads=threads, repeats=1 if quick else 2)
    command = "victor bench all" + (" --quick" if quick else "")
    return write_report(output, cpu_name(), peaks, steps, profile, loss_rows, matching_rows, command,
                        time.perf_counter() - start)
