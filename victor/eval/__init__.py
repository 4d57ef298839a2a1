"""Benchmark evaluation: official on-disk formats, LLaVA-1.5 prompts, official metrics.

``victor.eval.benchmarks`` reads the files, ``victor.eval.metrics`` scores answers and
``victor.eval.run`` drives a caller-supplied ``generate(images, prompts)`` resumably.
No model code lives here.
"""
from .benchmarks import BENCHMARKS, BenchmarkFormatError, EvalItem, get_benchmark
from .run import compare_runs, format_summary_table, run_benchmark

__all__ = [
    "BENCHMARKS",
    "BenchmarkFormatError",
    "EvalItem",
    "compare_runs",
    "format_summary_table",
    "get_benchmark",
    "run_benchmark",
]
