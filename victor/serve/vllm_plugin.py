"""vLLM general plugin: serve `victor_llava` checkpoints with vLLM's own LLaVA implementation.

Declared in pyproject.toml (`[project.entry-points."vllm.general_plugins"]`); vLLM calls
`register` in every process it starts, before it reads a model's config. Importing this module
imports victor, which registers `victor_llava` with transformers' Auto classes, so vLLM reads
the config without remote code. The architecture is registered by module path, so vLLM's
model code (`vllm_model.py`) is imported only when such a checkpoint is served; vllm itself
is imported only inside `register`.
"""
from __future__ import annotations

ARCHITECTURE = "VictorLlavaForConditionalGeneration"
MODEL = "victor.serve.vllm_model:VictorLlavaForConditionalGeneration"


def register() -> None:
    """Register the normalised LLaVA architecture with vLLM's model registry (idempotent)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL)
