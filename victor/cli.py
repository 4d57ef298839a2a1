"""`victor` command line: each subcommand parses, calls one function, prints."""
from __future__ import annotations

import argparse
import re
import logging
import os
import sys
import time


def _synth(args):
    from victor.tiny.prepare import prepare_world
    from victor.tiny.scenes import WorldConfig

    cfg = WorldConfig(seed=args.seed, n_train=args.n_train, n_val=args.n_val, image_size=args.image_size)
    paths, vision, llm = prepare_world(args.output, cfg, llm_pretrain_steps=args.llm_pretrain_steps,
                                       vision_pretrain_steps=args.vision_pretrain_steps)
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
    from victor.data.monitor import TooManySkipsError
    from victor.train.checkpoint import CheckpointError
    from victor.train.guards import NonFiniteLossError

    finished = False
    try:
        print(train_from_recipe(recipe, overrides))
        finished = True
    except (ConfigError, CheckpointError, DataFormatError, NonFiniteLossError, TooManySkipsError) as err:
        raise SystemExit(f"victor train: {err}") from None
    finally:
        _end_process_group(wait_for_peers=finished)


def _end_process_group(wait_for_peers: bool) -> None:
    """Tear the process group down while the interpreter and every peer are still alive.

    Rank 0 writes the stage record after the others are done; a peer that exits meanwhile, or a
    gloo group that is only destroyed at interpreter shutdown (the Trainer's DDP wrapper keeps it
    referenced from a reference cycle), aborts the process with "terminate called without an
    active exception" after a successful run. So: free the trainer now, meet, then destroy.
    After a failure there is no barrier: a peer may never reach it.
    """
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if wait_for_peers:
        dist.barrier()
    dist.destroy_process_group()


def _chat(args):
    from victor.infer import Generator

    gen = Generator(args.model)
    images = [args.image] * len(args.question)
    for q, a in zip(args.question, gen(images if args.image else [None] * len(args.question), args.question,
                                       max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                       temperature=args.temperature, top_p=args.top_p, seed=args.seed)):
        print(f"Q: {q}\nA: {a}")


def _eval(args):
    if args.suite:
        return _eval_suite(args)
    if not (args.model and args.benchmark and args.data):
        raise SystemExit("victor eval: give --model, --benchmark and --data (or --suite and --data-root)")
    from victor.eval.run import Generation, format_summary_table, run_scoring

    if args.scoring == "likelihood":
        from victor.eval.likelihood import Likelihood
        from victor.infer import Scorer

        scoring, run_name = Likelihood(Scorer(args.model)), f"{args.benchmark}-likelihood"
    else:
        from victor.infer import Generator

        gen = Generator(args.model)
        scoring = Generation(lambda images, prompts: gen(images, prompts, max_new_tokens=args.max_new_tokens or 16))
        run_name = args.benchmark
    out = args.output or os.path.join(args.model, "eval", run_name)
    summary = run_scoring(args.benchmark, args.data, args.image_root, scoring, out,
                          batch_size=args.batch_size, limit=args.limit)
    print(format_summary_table(summary))
    if "metrics_option_text" in summary:
        print(format_summary_table({**summary, "benchmark": f"{summary['benchmark']} (by option text)",
                                    "metrics": summary["metrics_option_text"], "tables": {}}))


def _data(args):
    """`victor data check`: exit 1 above --max-skip-fraction, 2 if a file or directory is unusable."""
    if args.data_command == "index":
        return _data_index(args)
    if args.data_command == "shard":
        return _data_shard(args)
    from victor.data import check
    from victor.data.llava import DataFormatError

    options = check.CheckOptions([p for item in args.data for p in item.split(",") if p], args.image_root,
                           args.processor, args.template, args.max_length)
    try:
        report = check.check_dataset(options, workers=args.workers, max_skip_fraction=args.max_skip_fraction)
    except (DataFormatError, FileNotFoundError, ValueError) as err:
        print(f"victor data check: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(check.format_report(report))
    if args.report:
        check.write_report(report, args.report)
        print(f"report written to {args.report}")
    if not report["passed"]:
        raise SystemExit(1)


def _data_index(args):
    """`victor data index FILE...`: build (or check) the record index of LLaVA JSON/JSONL files."""
    from victor.data.index import IndexedFile
    from victor.data.llava import DataFormatError

    for item in args.data:
        for path in [p for p in item.split(",") if p]:
            try:
                start = time.perf_counter()
                indexed = IndexedFile(path, rebuild=args.rebuild, progress=True)
            except DataFormatError as err:
                print(f"victor data index: {err}", file=sys.stderr)
                raise SystemExit(2) from None
            print(f"{path}: {len(indexed)} records ({indexed.format}), index {indexed.directory} "
                  f"({time.perf_counter() - start:.1f} s)")


def _data_shard(args):
    """`victor data shard DATA --image-root DIR --output OUT`: webdataset shards + their index."""
    from victor.data.llava import DataFormatError
    from victor.data.shards import index_shards, write_shards

    try:
        if args.index:
            meta = index_shards(args.index)
            print(f"indexed {len(meta['shards'])} shards, {meta['samples']} samples: {args.index}/shards.json")
            return
        if not (args.data and args.output):
            raise SystemExit("victor data shard: give DATA and --output (or --index DIR)")
        data = [p for item in args.data for p in item.split(",") if p]
        report = write_shards(data, args.image_root, args.output, args.samples_per_shard,
                              args.max_shard_mb * 1e6)
    except DataFormatError as err:
        print(f"victor data shard: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{report['written']} of {report['records']} records in {report['shards']} shards: {report['output']}")
    for reason, n in report["skipped"].items():
        first = report["examples"][reason][0]
        print(f"  left out {n} [{reason}], e.g. {first['where']} (id {first['id']!r}) {first['field']}: "
              f"{first['detail']}")


def _eval_suite(args):
    from victor.eval.suite import SUITES, format_layout, format_suite, run_suite

    if args.suite not in SUITES:
        raise SystemExit(f"victor eval: unknown suite {args.suite!r}; known: {', '.join(SUITES)}")
    if not args.data_root or not os.path.isdir(args.data_root):
        raise SystemExit(f"victor eval: --suite needs --data-root, a directory (got {args.data_root!r})")
    if not args.model:  # the layout check: which files each column would read
        print(format_layout(args.suite, args.data_root))
        return
    from victor.infer import Generator

    gen = Generator(args.model)
    result = run_suite(args.suite, args.data_root,
                       lambda images, prompts, n: gen(images, prompts, max_new_tokens=n),
                       args.output or os.path.join(args.model, "eval", args.suite), batch_size=args.batch_size,
                       limit=args.limit, max_new_tokens=args.max_new_tokens, model=args.model)
    print(format_suite(result))


def _convert(args):
    import torch

    from victor.model.comprehension_state import STATE_FILE
    from victor.model.convert import ConversionError, convert

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    try:
        report = convert(args.src, args.output, vision=args.vision, tokenizer=args.tokenizer,
                         chat_template=args.chat_template, allow_pickle=args.allow_pickle, dtype=dtype)
    except (ConversionError, OSError) as err:
        raise SystemExit(f"victor convert: {err}") from None
    print(f"{report['source']} ({report['source_model_type']}, {report['family']})\n"
          f"  -> {args.output}: model_type {report['model_type']}, {report['dtype']}, "
          f"{report['image_seq_length']} visual tokens, image_aspect_ratio {report['image_aspect_ratio'] or 'native'}, "
          f"chat template {report['chat_template']}\n  vision tower: {report['vision']} ({report['vision_weights']})")
    if report["pool"]:
        print(f"  pool {report['pool']} -> {STATE_FILE} (continue stage 1.5 with pool_init: checkpoint)")
    for note in report["notes"]:
        print(f"  note: {note}")


def _merge(args):
    import torch

    from victor.config import ConfigError
    from victor.model.merge import merge

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    try:
        report = merge(args.stage, args.output, dtype=dtype)
    except (ConfigError, OSError) as err:
        raise SystemExit(f"victor merge: {err}") from None
    print(f"{report['source']} + LoRA adapter (r={report['r']}, alpha={report['alpha']}, {report['layers']} layers) "
          f"-> {report['output']}: a stock checkpoint" + (f"; copied {', '.join(report['copied'])}" if report["copied"] else ""))


def _serve(args):
    import torch

    from victor.serve.web import serve

    serve(args.model, host=args.host, port=args.port,
          dtype=None if args.dtype == "auto" else getattr(torch, args.dtype), concurrency=args.concurrency,
          max_image_pixels=args.max_image_pixels or None)


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


def benchmark_formats() -> str:
    """`victor eval --help`'s list: every registered benchmark and the file format it reads."""
    from victor.eval.registry import BENCHMARKS

    lines = ["benchmarks (--benchmark NAME) and the files they read:"]
    for name, spec in BENCHMARKS.items():
        first = " ".join((type(spec).__doc__ or "").split("\n\n")[0].split()).replace("``", "")
        first = re.split(r"(?<!e\.g)\. ", first)[0]
        lines.append(f"  {name:<18} {first if len(first) <= 110 else first[:107] + '...'}")
    lines.append("scoring (--scoring): generate (parse a generated answer) | likelihood (compare the options' "
                 "log-likelihoods; open answers: the gold answer's)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="victor", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate the tiny image world (LLaVA JSON + images + benchmarks)")
    s.add_argument("--output", default="world")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--n-train", type=int, default=2000)
    s.add_argument("--n-val", type=int, default=200)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--llm-pretrain-steps", type=int, default=300,
                   help="text pretraining of the tiny LLM on the world's records (0: random weights)")
    s.add_argument("--vision-pretrain-steps", type=int, default=200,
                   help="region pretraining of the tiny encoder (0: random weights)")

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

    s = sub.add_parser("eval", help="score a checkpoint on a benchmark in its official format, or a whole suite",
                       epilog=benchmark_formats(), formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", help="checkpoint directory (with --suite and no model: check the data layout)")
    s.add_argument("--benchmark", metavar="NAME", help="one of the benchmarks below (`_` and `-` alike)")
    s.add_argument("--data")
    s.add_argument("--image-root")
    s.add_argument("--suite", help="llava-1.5: the nine Model Zoo benchmarks of LLaVA-1.5 / Croc-7B")
    s.add_argument("--data-root", help="with --suite: a folder laid out as LLaVA's playground/data/eval")
    s.add_argument("--output")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--limit", type=int, help="first N questions of each benchmark")
    s.add_argument("--max-new-tokens", type=int,
                   help="default 16 for --benchmark; per benchmark for --suite (128, free-text ones 1024)")
    s.add_argument("--scoring", choices=("generate", "likelihood"), default="generate",
                   help="generate an answer and parse it (default), or compare the log-likelihoods of the "
                        "options / yes-no (open answers: the gold answer's mean token log-likelihood)")

    s = sub.add_parser("convert", help="the authors' released checkpoint (croc_llama / llava_llama) -> ours")
    s.add_argument("src", help="the released checkpoint: a directory (config.json, weights, tokenizer) or hub id")
    s.add_argument("--output", required=True)
    s.add_argument("--vision", help="vision tower hub id or directory (default: the config's mm_vision_tower)")
    s.add_argument("--tokenizer", help="tokenizer hub id or directory (default: the checkpoint's own)")
    s.add_argument("--chat-template", default="vicuna", help="vicuna (Vicuna v1, these models'), chatml, or Jinja")
    s.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="auto: the released weights' dtype")
    s.add_argument("--allow-pickle", action="store_true",
                   help="read .bin weights (torch.load with weights_only=True)")

    s = sub.add_parser("merge", help="fold a LoRA stage's adapter into its weights: a stock checkpoint")
    s.add_argument("stage", help="a stage (or checkpoint-N) trained with lora_r > 0")
    s.add_argument("--output", required=True)
    s.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])

    s = sub.add_parser("serve", help="web chat on a checkpoint (Gradio: pip install 'victor[web]')")
    s.add_argument("--model", required=True)
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    s.add_argument("--concurrency", type=int, default=1,
                   help="generations run at once on the model (Gradio's queue); more requests wait (default 1)")
    s.add_argument("--max-image-pixels", type=int, default=40_000_000,
                   help="uploads with more pixels are refused before decoding (0: no limit; default 40000000)")

    s = sub.add_parser("data", help="dataset tools: `victor data check DATA --image-root DIR`, `victor data index`, "
                                    "`victor data shard`")
    data = s.add_subparsers(dest="data_command", required=True)
    s = data.add_parser("check", help="validate every record with training's own code path, in parallel")
    s.add_argument("data", nargs="+", help="LLaVA JSON/JSONL file(s), space- or comma-separated, a Hugging Face "
                                           "dataset folder or parquet, shards, or a mixture YAML (every source in full)")
    s.add_argument("--image-root", help="folder the records' image paths are relative to")
    s.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    s.add_argument("--report", help="write the JSON report here")
    s.add_argument("--max-skip-fraction", type=float, default=0.1, help="exit 1 above this share of skipped records")
    s.add_argument("--processor", help="a saved processor (e.g. the previous stage's output): also check "
                                       "templates, max_length and image processing")
    s.add_argument("--template", choices=["chat", "plain"], default="chat", help="with --processor")
    s.add_argument("--max-length", type=int, default=2048, help="with --processor")

    s = data.add_parser("index", help="build the record index of LLaVA JSON/JSONL files (done on first use "
                                       "otherwise): constant memory whatever their size")
    s.add_argument("data", nargs="+", help="LLaVA JSON/JSONL file(s), space- or comma-separated")
    s.add_argument("--rebuild", action="store_true", help="rebuild even if the index is current")

    s = data.add_parser("shard", help="write webdataset tar shards (record + image bytes per key) and their index, "
                                       "for streaming: data_path: OUT")
    s.add_argument("data", nargs="*", help="LLaVA JSON/JSONL file(s)")
    s.add_argument("--image-root", help="folder the records' image paths are relative to")
    s.add_argument("--output", help="an empty folder for the shards")
    s.add_argument("--samples-per-shard", type=int, default=1000)
    s.add_argument("--max-shard-mb", type=float, default=1000.0)
    s.add_argument("--index", help="instead: index existing webdataset tars of LLaVA records in this folder")

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
    {"synth": _synth, "chat": _chat, "eval": _eval, "compare": _compare, "data": _data, "convert": _convert,
     "serve": _serve, "merge": _merge}[args.command](args)


if __name__ == "__main__":
    main()
