"""`victor` command line: each subcommand parses, calls one function, prints."""
from __future__ import annotations

import argparse
import logging
import os
import sys


def _synth(args):
    from victor.tiny.prepare import prepare_world
    from victor.tiny.scenes import WorldConfig

    cfg = WorldConfig(seed=args.seed, n_train=args.n_train, n_val=args.n_val, image_size=args.image_size)
    paths, vision, llm = prepare_world(args.output, cfg)
    print(f"world written to {paths.root}")
    for name in ("stage1", "stage15", "stage2", "val_qa", "mmbench"):
        print(f"  {name:8s} {getattr(paths, name)}")
    print(f"  pope     {', '.join(str(p) for p in paths.pope.values())}")
    print(f"  vision   {vision}\n  llm      {llm}")


def _train(argv):
    """`victor train [RECIPE.yaml] [--option value ...]`: the recipe first, the command line wins."""
    from victor.train.run import train_from_recipe

    recipe, overrides = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else (None, argv)
    if recipe is None and (not overrides or overrides[0] in ("-h", "--help")):
        from transformers import HfArgumentParser

        from victor.config import ARGUMENT_CLASSES

        HfArgumentParser(ARGUMENT_CLASSES).print_help()
        return
    from victor.config import ConfigError
    from victor.data.llava import DataFormatError
    from victor.train.checkpoint import CheckpointError

    try:
        print(train_from_recipe(recipe, overrides))
    except (ConfigError, CheckpointError, DataFormatError) as err:
        raise SystemExit(f"victor train: {err}") from None


def _chat(args):
    from victor.infer import Generator

    gen = Generator(args.model)
    images = [args.image] * len(args.question)
    for q, a in zip(args.question, gen(images if args.image else [None] * len(args.question), args.question,
                                       max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                       temperature=args.temperature, top_p=args.top_p, seed=args.seed)):
        print(f"Q: {q}\nA: {a}")


def _eval(args):
    from victor.eval.run import format_summary_table, run_benchmark

    if args.scoring == "likelihood":
        from victor.eval.likelihood import run_likelihood
        from victor.infer import Scorer

        out = args.output or os.path.join(args.model, "eval", f"{args.benchmark}-likelihood")
        summary = run_likelihood(args.benchmark, args.data, args.image_root, Scorer(args.model), out,
                                 batch_size=args.batch_size, limit=args.limit)
        print(format_summary_table(summary))
        if "metrics_option_text" in summary:
            print(format_summary_table({**summary, "benchmark": f"{summary['benchmark']} (by option text)",
                                        "metrics": summary["metrics_option_text"], "tables": {}}))
        return
    from victor.infer import Generator

    gen = Generator(args.model)
    out = args.output or os.path.join(args.model, "eval", args.benchmark)
    summary = run_benchmark(
        args.benchmark, args.data, args.image_root,
        lambda images, prompts: gen(images, prompts, max_new_tokens=args.max_new_tokens),
        out, batch_size=args.batch_size, limit=args.limit,
    )
    print(format_summary_table(summary))


def _compare(args):
    from victor.eval.run import compare_runs

    print(compare_runs(args.runs))


def _demo(argv):
    from victor.demo.run import main as demo_main

    demo_main(argv)


def _probe(argv):
    from victor.demo.probe import main as probe_main

    probe_main(argv)


def _bench(argv):
    from victor.bench import main as bench_main

    bench_main(argv)


def _estimate_memory(argv):
    from victor.config import ConfigError
    from victor.train.memory import main as memory_main

    try:
        memory_main(argv)
    except ConfigError as err:
        raise SystemExit(f"victor estimate-memory: {err}") from None


PASS_THROUGH = {"train": _train, "demo": _demo, "probe": _probe, "bench": _bench,
                "estimate-memory": _estimate_memory}  # these parse their own options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="victor", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate the tiny image world (LLaVA JSON + images + benchmarks)")
    s.add_argument("--output", default="world")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--n-train", type=int, default=2000)
    s.add_argument("--n-val", type=int, default=200)
    s.add_argument("--image-size", type=int, default=64)

    sub.add_parser("train", help="run one stage from a YAML recipe; --any_option value overrides it")

    s = sub.add_parser("chat", help="ask a checkpoint about an image")
    s.add_argument("--model", required=True)
    s.add_argument("--image")
    s.add_argument("question", nargs="+")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--top-p", type=float, default=0.9)
    s.add_argument("--seed", type=int, default=None)

    s = sub.add_parser("eval", help="score a checkpoint on a benchmark in its official format")
    s.add_argument("--model", required=True)
    s.add_argument("--benchmark", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--image-root")
    s.add_argument("--output")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--limit", type=int)
    s.add_argument("--max-new-tokens", type=int, default=16)
    s.add_argument("--scoring", choices=("generate", "likelihood"), default="generate",
                   help="generate an answer and parse it (default), or compare the log-likelihoods of the "
                        "options / yes-no (open answers: the gold answer's mean token log-likelihood)")

    s = sub.add_parser("compare", help="benchmark summaries side by side")
    s.add_argument("runs", nargs="+")

    sub.add_parser("demo", help="the main job: tiny world -> stages -> eval -> report", add_help=False)
    sub.add_parser("probe", help="linear probes of region colour / shape / occupancy on the LLM's visual "
                                 "hidden states (tiny world)", add_help=False)
    sub.add_parser("estimate-memory", help="per-GPU memory of a recipe's stage: --gpus N --zero 2|3",
                   add_help=False)
    sub.add_parser("bench", help="timing: `victor bench step`, `victor bench matching`", add_help=False)
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASS_THROUGH:
        return PASS_THROUGH[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    {"synth": _synth, "chat": _chat, "eval": _eval, "compare": _compare}[args.command](args)


if __name__ == "__main__":
    main()
