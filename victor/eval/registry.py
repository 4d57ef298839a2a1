"""Every benchmark by name. Adding one: a spec class in a module of its kind, plus a line here."""
from __future__ import annotations

from .judged import LlavaWildSpec, MMVetSpec
from .mmbench import MMBenchSpec
from .multiple_choice import MMStarSpec, RealWorldQASpec, ScienceQASpec, SeedSpec
from .prompts import MC_SUFFIX_CN
from .short_answer import GQASpec, VQAv2Spec
from .spec import BenchmarkSpec
from .yes_no import PopeSpec

__all__ = ["BENCHMARKS", "get_benchmark"]

BENCHMARKS: dict[str, BenchmarkSpec] = {
    "mmbench": MMBenchSpec(),
    "mmbench-circular": MMBenchSpec(circular=True, name="mmbench-circular"),
    "mmbench-cn": MMBenchSpec(name="mmbench-cn", suffix=MC_SUFFIX_CN),  # mmbench_dev_cn_*.tsv, LLaVA --lang cn
    "seed": SeedSpec(),
    "mmstar": MMStarSpec(),
    "realworldqa": RealWorldQASpec(),
    "scienceqa": ScienceQASpec(),
    "pope": PopeSpec(),
    "gqa": GQASpec(),
    "vqav2": VQAv2Spec(),
    "mmvet": MMVetSpec(),
    "llava-wild": LlavaWildSpec(),
}


def get_benchmark(name: str) -> BenchmarkSpec:
    """Look a benchmark up by name (``_`` and ``-`` are interchangeable, case-insensitive)."""
    key = name.strip().lower().replace("_", "-")
    if key not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[key]
