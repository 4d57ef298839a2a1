"""Benchmark evaluation: official on-disk formats, LLaVA-1.5 prompts, official metrics.

Readers by kind (``multiple_choice``, ``mmbench``, ``yes_no``, ``short_answer``, ``judged``)
share file reading (``files``), prompts (``prompts``) and the item/spec types (``spec``);
``registry`` names them, ``metrics`` scores answers, ``run`` is the one resumable runner with
its scoring modes: a caller-supplied ``generate(images, prompts)`` (``run``) or
``loglikelihood(images, prompts, continuations)`` (``likelihood``).  No model code lives here.
"""
from .files import BenchmarkFormatError
from .likelihood import Likelihood, run_likelihood
from .registry import BENCHMARKS, get_benchmark
from .run import Generation, Scoring, compare_runs, format_summary_table, run_benchmark, run_scoring
from .spec import EvalItem

__all__ = [
    "BENCHMARKS",
    "BenchmarkFormatError",
    "EvalItem",
    "Generation",
    "Likelihood",
    "Scoring",
    "compare_runs",
    "format_summary_table",
    "get_benchmark",
    "run_benchmark",
    "run_likelihood",
    "run_scoring",
]
