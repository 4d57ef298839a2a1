"""Serving integrations (vLLM); each imports its serving library only when that library calls it."""
