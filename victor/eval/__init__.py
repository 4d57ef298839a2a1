"""Benchmark evaluation: official on-disk formats, LLaVA-1.5 prompts, official metrics.

Readers by kind (``multiple_choice``, ``mmbench``, ``yes_no``, ``short_answer``, ``judged``)
share file reading (``files``), prompts (``prompts``) and the item/spec types (``spec``);
``registry`` names them, ``metrics`` scores answers, ``run`` drives a caller-supplied
``generate(images, prompts)`` resumably and ``likelihood`` a caller-supplied
``loglikelihood(images, prompts, continuations)``.  No model code lives here.
"""
from .files import BenchmarkFormatError
from .likelihood import run_likelihood
from .registry import BENCHMARKS, get_benchmark
from .run import compare_runs, format_summary_table, run_benchmark
from .spec import EvalItem

__all__ = [
    "BENCHMARKS",
    "BenchmarkFormatError",
    "EvalItem",
    "compare_runs",
    "format_summary_table",
    "get_benchmark",
    "run_benchmark",
    "run_likelihood",
]
