"""GPU check for one GPU, one command, under 5 minutes: stage 1.5 with ZeRO-3 (+ bf16 on a GPU) on a
small random LLM at 576 visual tokens (336 px / 14 px patches), with sdpa and, where installed,
flash attention (a mixed attention mode must be refused with it). One table: step time, peak GPU
memory, host syncs per step (CUDA's sync debug mode over the whole step, and victor's own
counted by `victor.bench.syncs`), MFU (the step's FLOPs counted by torch's FlopCounterMode over the
measured bf16 GEMM peak of the device), whether every parameter and buffer sits on the training device, and
whether the saved checkpoint equals the trained weights. Exit 1 on any mismatch.

    python tools/gpu_check.py                 # GPU (tools/gpu_check.sh)
    python tools/gpu_check.py --device cpu    # the same path on CPU, tiny sizes, fp32 (the tests run it)

Each row runs in its own process (DeepSpeed and accelerate keep global state). Without DeepSpeed
installed the rows run without it and the table says so.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

SIZES = {"cuda": dict(image_size=336, patch_size=14, vision_hidden=256, vision_layers=2, llm_hidden=1024,
                      llm_layers=4, steps=20, batch=4, pool=1024, images=96),
         "cpu": dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, llm_hidden=64,
                     llm_layers=2, steps=3, batch=2, pool=32, images=8)}
WORDS = "a an the is of in image picture describe detail red green blue yellow background there no objects ."


def prepare(root: Path, device: str) -> tuple[str, str]:
    """Random backbones, coloured images with detailed captions, and a 1-step stage 1 to start from."""
    from PIL import Image

    from victor.tiny.backbones import save_backbones
    from victor.tiny.world import build_tokenizer
    from victor.train.run import train_from_recipe

    size = SIZES[device]
    vision, llm = save_backbones(root / "backbones", build_tokenizer([WORDS]), image_size=size["image_size"],
                                 patch_size=size["patch_size"], vision_hidden=size["vision_hidden"],
                                 vision_layers=size["vision_layers"], llm_hidden=size["llm_hidden"],
                                 llm_layers=size["llm_layers"])
    (root / "img").mkdir(exist_ok=True)
    colours = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (230, 230, 20)}
    records = []
    for i in range(size["images"]):
        name = list(colours)[i % 4]
        Image.new("RGB", (size["image_size"],) * 2, colours[name]).save(root / "img" / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image in detail ."},
            {"from": "gpt", "value": f"the background is {name} . there are no objects ."}]})
    (root / "d.json").write_text(json.dumps(records))
    train_from_recipe(None, ["--stage", "1", "--vision", vision, "--llm", llm, "--data_path", str(root / "d.json"),
                             "--image_root", str(root / "img"), "--output_dir", str(root / "s1"), "--max_steps", "1",
                             "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
                             "--use_cpu", str(device == "cpu"), "--disable_tqdm", "True"])
    return vision, llm


def row(root: Path, device: str, attn: str, attention: str, out_json: Path) -> None:
    """One stage-1.5 run in this process; writes its measurements to `out_json`."""
    import torch
    from transformers import TrainerCallback

    from victor.config import parse_recipe
    from victor.train.engine import gathered
    from victor.train.run import train_stage

    size, cuda = SIZES[device], device == "cuda"
    deepspeed = importlib.util.find_spec("deepspeed") is not None
    result = {"attn": attn, "attention": attention, "deepspeed": deepspeed}

    from torch.utils.flop_counter import FlopCounterMode

    from victor.bench.syncs import SyncCounter

    class Measure(TrainerCallback):
        """Times every step but the one (the second) that runs under the FLOP and sync counters."""

        def __init__(self):
            self.times, self.syncs, self.misplaced, self.final, self._caught = [], [], set(), {}, None
            self.flops, self.victor_syncs, self._counters = None, None, None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self._counters = (FlopCounterMode(display=False), SyncCounter())
                for c in self._counters:
                    c.__enter__()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            self._caught = warnings.catch_warnings(record=True)
            self._log = self._caught.__enter__()
            warnings.simplefilter("always")
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
                torch.cuda.synchronize()
            if self._counters is not None:
                for c in reversed(self._counters):
                    c.__exit__(None, None, None)
                self.flops = self._counters[0].get_total_flops()
                self.victor_syncs = self._counters[1].count()
                self._counters = None
            else:
                self.times.append(time.perf_counter() - self._t)
            self.syncs.append(sum("synchroniz" in str(w.message) for w in self._log))
            self._caught.__exit__(None, None, None)
            for name, t in [*model.named_parameters(), *model.named_buffers()]:
                where = getattr(t, "ds_tensor", t).device.type  # ZeRO-3 keeps the partition in ds_tensor
                if where != device:
                    self.misplaced.add(f"{name}:{where}")

        def on_train_end(self, args, state, control, model=None, **kwargs):
            for name, p in model.named_parameters():
                with gathered([p]):
                    self.final[name] = p.detach().float().cpu().clone()
            persistent = set(model.state_dict())  # non-persistent buffers (rotary tables) are never saved
            self.final.update({n: b.detach().float().cpu().clone() for n, b in model.named_buffers() if n in persistent})

    measure = Measure()
    out = root / f"s15-{attn}-{attention}"
    argv = ["--stage", "1.5", "--init_from", str(root / "s1"), "--data_path", str(root / "d.json"), "--image_root",
            str(root / "img"), "--output_dir", str(out), "--max_steps", str(size["steps"]),
            "--per_device_train_batch_size", str(size["batch"]), "--pool_size", str(size["pool"]),
            "--attention", attention, "--attn_implementation", attn, "--report_to", "none", "--save_strategy", "no",
            "--logging_steps", "1", "--disable_tqdm", "True", "--max_length", "1024", "--use_cpu", str(not cuda),
            "--bf16", str(cuda), "--seed", "0"]
    if deepspeed:
        argv += ["--deepspeed", str(Path(__file__).resolve().parent.parent / "recipes" / "deepspeed" / "zero3.json")]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        train_stage(parse_recipe(None, argv), callbacks=[measure])
    except Exception as err:  # noqa: BLE001 - a refusal is a result here; anything else fails the row
        result.update(error=f"{type(err).__name__}: {err}"[:300])
        out_json.write_text(json.dumps(result))
        return
    torch.save(measure.final, out / "live_final.pt")  # compared with the reloaded checkpoint by the parent
    steady = measure.times[1:] or measure.times
    peak = gemm_peak(torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if cuda else torch.float32)
    step_s = sum(steady) / len(steady)
    result.update(victor_syncs=measure.victor_syncs, mfu=(measure.flops or 0) / step_s / peak if peak else None)
    result.update(step_s=sum(steady) / len(steady), syncs=max(measure.syncs[1:] or measure.syncs),
                  peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                  misplaced=sorted(measure.misplaced)[:5], out=str(out), steps=len(measure.times))
    out_json.write_text(json.dumps(result))


def gemm_peak(device, dtype, n: int = 4096) -> float:
    """Measured FLOP/s of an n^3 matrix multiply on `device` (best of 5)."""
    import torch

    n = n if device.type == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def reload_differences(out: Path) -> list[str]:
    """The checkpoint as a user loads it (in a process without DeepSpeed's global state) against the
    weights the run ended with, gathered in full: names that are missing or differ."""
    import torch
    from safetensors.torch import load_file

    from victor.model.assemble import load_model

    reloaded, _ = load_model(str(out))
    saved = {f"llava.{k}": v for k, v in reloaded.state_dict().items()}
    saved.update(load_file(str(out / "comprehension.safetensors")))
    live = torch.load(out / "live_final.pt")
    return sorted(k for k in live if k not in saved) + sorted(
        f"{k} (max diff {(saved[k].float() - live[k]).abs().max().item():.2e})" for k in live
        if k in saved and not torch.equal(saved[k].float(), live[k]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--work", default="gpu-check", help="scratch folder")
    parser.add_argument("--row", nargs=3, metavar=("ATTN", "ATTENTION", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = Path(args.work).resolve()
    if args.row:
        row(root, args.device, args.row[0], args.row[1], Path(args.row[2]))
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --device cpu for the CPU path", file=sys.stderr)
        return 1
    root.mkdir(parents=True, exist_ok=True)
    prepare(root, args.device)
    rows = [("sdpa", "bidirectional-visual", "runs")]
    if args.device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        rows += [("flash_attention_2", "bidirectional-visual", "refused"), ("flash_attention_2", "causal", "runs")]
    if importlib.util.find_spec("deepspeed") is None:
        print("gpu_check: DeepSpeed is not installed: the rows run without ZeRO-3 (pip install deepspeed, or a wheel "
              "built elsewhere)")
    failures, lines = [], []
    header = f"{'attention kernel':18} {'mode':21} {'engine':10} {'s/step':>7} {'peak GiB':>8} {'syncs/step':>10} " \
             f"{'victor syncs':>12} {'MFU':>5} {'on device':>9} {'reload':>6}  verdict"
    for attn, attention, expect in rows:
        out = root / f"{attn}-{attention}.json"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, __file__, "--device", args.device, "--work", str(root), "--row", attn,
                               attention, str(out)], capture_output=True, text=True, env=env)
        if proc.returncode or not out.is_file():
            failures.append(f"{attn}/{attention}: the row crashed:\n{proc.stderr[-3000:]}")
            lines.append(f"{attn:18} {attention:21} {'-':10} {'crashed':>7}")
            continue
        r = json.loads(out.read_text())
        engine = "ZeRO-3" if r["deepspeed"] else "none"
        if expect == "refused":
            ok = "error" in r and "flash" in r["error"].lower()
            verdict = "refused, as it must be" if ok else f"NOT refused: {r.get('error', 'it trained')}"
            lines.append(f"{attn:18} {attention:21} {engine:10} {'-':>7} {'-':>8} {'-':>10} {'-':>12} {'-':>5} {'-':>9} {'-':>6}  {verdict}")
            if not ok:
                failures.append(f"{attn}/{attention}: a mixed attention mode must be refused with flash attention")
            continue
        if "error" in r:
            failures.append(f"{attn}/{attention}: {r['error']}")
            lines.append(f"{attn:18} {attention:21} {engine:10} {'failed':>7}  {r['error'][:80]}")
            continue
        r["reload_differs"] = reload_differences(Path(r["out"]))[:5]
        problems = ([f"not on {args.device}: {r['misplaced']}"] if r["misplaced"] else []) + (
            [f"reload differs: {r['reload_differs']}"] if r["reload_differs"] else [])
        failures += [f"{attn}/{attention}: {p}" for p in problems]
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
        syncs = str(r["syncs"]) if args.device == "cuda" else "n/a"
        mfu = f"{100 * r['mfu']:.0f}%" if r.get("mfu") is not None else "n/a"
        lines.append(f"{attn:18} {attention:21} {engine:10} {r['step_s']:7.3f} {peak:>8} {syncs:>10} "
                     f"{str(r.get('victor_syncs')):>12} {mfu:>5} "
                     f"{'yes' if not r['misplaced'] else 'NO':>9} {'equal' if not r['reload_differs'] else 'DIFF':>6}"
                     f"  {'ok' if not problems else 'MISMATCH'}")
    size = SIZES[args.device]
    print(f"stage 1.5, {size['steps']} steps, batch {size['batch']}, "
          f"{(size['image_size'] // size['patch_size']) ** 2} visual tokens, LLM hidden {size['llm_hidden']} x "
          f"{size['llm_layers']} layers, {'bf16' if args.device == 'cuda' else 'fp32'} on {args.device}")
    print(header)
    print("\n".join(lines))
    if failures:
        print("\ngpu_check FAILED:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    print("gpu_check: all rows ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
