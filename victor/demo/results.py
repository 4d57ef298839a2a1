"""The record a finished demo run hands to its report, evidence and figures (plain data: the
report reads it, never the running demo)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from victor.tiny.world import WorldPaths


@dataclass
class DemoResults:
    """What a finished demo run hands to its report."""

    root: Path
    preset: str
    precision: str
    seeds: int
    arms: list[tuple[str, bool]]  # (name, runs stage 1.5 with comprehension)
    world: WorldPaths
    stage1: Path
    runs: dict  # (arm, seed) -> {"stage1_5", "stage2", "eval": {benchmark: summary}, "probe", ["recon"]}
    timings: dict[str, float]
    command: str
    roles: dict[str, str] = field(default_factory=dict)  # arm -> arm | positive control | negative control
    comparisons: list = field(default_factory=list)  # [arm, reference, role]: difference = arm - reference
    sample_efficiency: dict = field(default_factory=dict)  # (arm, share of stage-2 data) -> [stage-2 dir per seed]
    steps: dict = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per phase (all threads)
    declaration: dict = field(default_factory=dict)  # run.declaration_commit(): where the primary measure was declared
    started: str = ""  # the run's start (local time, ISO 8601)
    # "bench:type" -> accuracy of the tiny LLM reading the true scene slots (no encoder, no projector): a ceiling
    ceilings: dict[str, float] = field(default_factory=dict)

    @property
    def arm_names(self) -> list[str]:
        return [name for name, _ in self.arms]
