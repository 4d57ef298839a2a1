"""`victor bench`: measurements that back performance claims, as ratios taken in one run.

    victor bench step      stage-1.5 training step vs a plain LLaVA step (same model, same batch)
    victor bench matching  exact batched assignment vs scipy's linear_sum_assignment per image
    victor bench realistic the step at the realistic shape (fp32 and bf16, ratios with spread, % of GEMM peak)
    victor bench memory    the LM loss's peak memory, plain vs chunked, at 32 k and 152 k vocabularies
    victor bench memory-scaling  stage-1.5 vs plain step peak memory against pool size, visual tokens
                           and batch (fresh process each, fitted MiB per unit) and estimate-memory vs measured
    victor bench all       all of the above; writes docs/performance.md (--quick: a subset, ~5 min)
    victor bench data      data memory per rank (record index vs in-memory records) and data rate
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="victor bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("step", help="stage-1.5 step overhead against a plain step")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--image-size", type=int, default=96)
    s.add_argument("--patch", type=int, default=8)
    s.add_argument("--vision-hidden", type=int, default=64)
    s.add_argument("--hidden", type=int, default=256)
    s.add_argument("--layers", type=int, default=4)
    s.add_argument("--pool-size", type=int, default=512)
    s.add_argument("--methods", nargs="+", default=["hungarian", "nearest"])
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--threads", type=int, default=2)
    sub.add_parser("matching", help="exact assignment against scipy per image", add_help=False)
    for name in ("realistic", "memory", "all"):
        q = sub.add_parser(name)
        q.add_argument("--quick", action="store_true")
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--rounds", type=int, default=None)
        q.add_argument("--output", default="docs/performance.md")
    sub.add_parser("data", help="data memory per rank and data rate", add_help=False)
    sub.add_parser("memory-scaling", help="step peak memory vs pool size, visual tokens and batch", add_help=False)
    args, rest = p.parse_known_args(argv)
    if args.what == "memory-scaling":
        from victor.bench.memory_scaling import main as scaling_main

        scaling_main(rest)
    elif args.what == "data":
        from victor.bench.data import main as data_main

        data_main(rest)
    elif args.what == "step":
        from victor.bench.step import bench_step

        bench_step(args)
    elif args.what == "all":
        from victor.bench.suite import run_all

        print(run_all(args.quick, args.threads, args.output, args.rounds))
    elif args.what == "realistic":
        import torch

        from victor.bench.suite import bench_steps, gemm_peak

        torch.set_num_threads(args.threads)
        peaks = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
        result = bench_steps("realistic", rounds=args.rounds or 3, threads=args.threads, peaks=peaks)
        for r in result["rows"]:
            print(f"{r['dtype']} {r['variant']:45s} {r['seconds']:.3f}s x{r['ratio']:.3f} ({r['lo']:.3f}..{r['hi']:.3f}) "
                  f"{100 * r['peak_fraction']:.0f}% of peak, syncs {r['syncs']}, peak {r['peak_mib']:.0f} MiB")
    elif args.what == "memory":
        from victor.bench.suite import bench_loss_memory

        for r in bench_loss_memory(tokens=1400 if args.quick else 2800, threads=args.threads):
            print(r)
    else:
        from victor.bench.matching import main as matching_main

        matching_main(rest)
