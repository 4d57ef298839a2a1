"""`victor bench`: measurements that back performance claims, as ratios taken in one run.

    victor bench step      stage-1.5 training step vs a plain LLaVA step (same model, same batch)
    victor bench matching  exact batched assignment vs scipy's linear_sum_assignment per image
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
    sub.add_parser("data", help="data memory per rank and data rate", add_help=False)
    args, rest = p.parse_known_args(argv)
    if args.what == "data":
        from victor.bench.data import main as data_main

        data_main(rest)
    elif args.what == "step":
        from victor.bench.step import bench_step

        bench_step(args)
    else:
        from victor.bench.matching import main as matching_main

        matching_main(rest)
