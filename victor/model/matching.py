"""Token-to-pool matching for the visual comprehension stage ("stage 1.5").

Each masked visual token is replaced by a row of a learnable visual token pool
``P``, chosen by a *matcher* on the Euclidean cost ``C[i, j] = ||x_i - P_j||``:

* ``nearest``   -- every token takes its cheapest pool row (rows may repeat);
* ``hungarian`` -- the one-to-one assignment (distinct rows) of minimum total
  cost, i.e. the rectangular linear assignment problem
  ``min sum_i C[i, s(i)]`` over injective ``s``: tokens -> pool rows.

Matchers return indices only; no gradient flows through the assignment.

The exact solver
----------------
``victor.model.lap`` runs the shortest augmenting path algorithm (the one
behind scipy's dense ``linear_sum_assignment``), compiled with numba, one
image per thread. It reads each token's costs lazily, cheapest blocks first,
keeping LP duals that prove optimality on the full matrix; see its docstring.
At the published shape (16 images x 547 masked tokens x 2048 pool rows) it is
an order of magnitude faster than scipy per image: ``victor bench matching``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from victor.model import lap

__all__ = [
    "METHODS",
    "MatchingError",
    "assign",
    "euclidean_cost",
    "hungarian_assignment",
    "hungarian_assignment_batched",
    "nearest_assignment",
]

METHODS = ("hungarian", "nearest")


class MatchingError(ValueError):
    """The requested one-to-one matching is impossible (more tokens than pool rows)."""


@contextmanager
def exact_fp32_matmul():
    """fp32 matrix multiplies in full fp32 here, whatever the process chose: TF32 on CUDA
    (`--tf32 True`, `set_float32_matmul_precision("high")`) and oneDNN's bf16/TF32 on CPUs are
    turned off for the block and restored after it."""
    backends = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    saved = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = "ieee"
        yield
    finally:
        for b, value in zip(backends, saved):
            b.fp32_precision = value


def euclidean_cost(tokens: Tensor, pool: Tensor) -> Tensor:
    """Euclidean distances between tokens ``[..., n, D]`` and pool rows ``[m, D]``.

    Returns a float32 ``[..., n, m]`` tensor on ``tokens.device``, detached from
    autograd, computed as ``sqrt(max(||x||^2 + ||p||^2 - 2 x.p, 0))``. The cross term is an
    fp32 matrix multiply with autocast and TF32 (or oneDNN bf16) turned off for it: under bf16
    autocast it would run in bf16 and under TF32 with a 10-bit mantissa, rounding errors (~1e-3
    of the distance) larger than the gaps that decide which pool row is nearest.
    """
    with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False), exact_fp32_matmul():
        x = tokens.detach().float()
        p = pool.detach().to(device=x.device, dtype=torch.float32)
        sq = (x * x).sum(-1, keepdim=True) + (p * p).sum(-1) - 2.0 * (x @ p.T)
        return sq.clamp_min_(0.0).sqrt_()


def nearest_assignment(cost: Tensor) -> Tensor:
    """Per-token argmin ``[..., n, m] -> [..., n]`` (not one-to-one)."""
    with torch.no_grad():
        return cost.detach().argmin(dim=-1)


def hungarian_assignment(cost: Tensor) -> Tensor:
    """Exact minimum-cost one-to-one assignment for one ``[n, m]`` cost (n <= m).

    Returns a LongTensor ``[n]`` of distinct pool-row indices on ``cost.device``.
    """
    if cost.dim() != 2:
        raise ValueError(f"hungarian_assignment expects a [n, m] cost, got shape {tuple(cost.shape)}")
    return hungarian_assignment_batched([cost])[0]


def hungarian_assignment_batched(costs: Tensor | Sequence[Tensor]) -> Tensor | list[Tensor]:
    """Exact assignments for a batch: ``[B, n, m]`` tensor -> ``[B, n]``; list -> list.

    A list may mix instances with different numbers of tokens (and pool sizes).
    Indices come back as LongTensors on the input's device; costs on an
    accelerator are copied to the CPU once. The solver uses as many threads as
    torch does (one image per thread).
    """
    stacked = isinstance(costs, Tensor)
    if stacked and costs.dim() != 3:
        raise ValueError(f"expected a [B, n, m] tensor or a list of [n, m] tensors, got {tuple(costs.shape)}")
    for c in costs:
        if c.dim() != 2:
            raise ValueError(f"each cost must be [n, m], got shape {tuple(c.shape)}")
        _check_sizes(*c.shape)
    if stacked:
        return torch.from_numpy(_solve(costs)).to(costs.device)
    out: list[Tensor | None] = [None] * len(costs)
    by_shape: dict[tuple, list[int]] = {}
    for i, c in enumerate(costs):
        by_shape.setdefault(tuple(c.shape), []).append(i)
    for index in by_shape.values():  # instances of one shape are solved together
        cols = _solve(torch.stack([costs[i].detach().to("cpu") for i in index]))
        for k, i in enumerate(index):
            out[i] = torch.from_numpy(cols[k]).to(costs[i].device)
    return out


def _solve(cost: Tensor) -> np.ndarray:
    with torch.no_grad():
        c = cost.detach().to("cpu")
        if c.dtype not in (torch.float32, torch.float64):
            c = c.float()  # half types widen exactly
        try:
            return lap.solve(c.contiguous().numpy(), threads=torch.get_num_threads())
        except lap.NonFiniteCost as err:
            raise ValueError(f"matching costs must be finite: {err}") from None


def assign(cost: Tensor | Sequence[Tensor], method: str) -> Tensor | list[Tensor]:
    """Dispatch to a matcher by name (``"hungarian"`` or ``"nearest"``).

    ``cost`` may be ``[n, m]``, ``[B, n, m]`` or a list of ``[n, m]`` tensors.
    """
    if method not in METHODS:
        raise ValueError(f"unknown matching method {method!r}; valid choices: {', '.join(METHODS)}")
    if method == "nearest":
        return nearest_assignment(cost) if isinstance(cost, Tensor) else [nearest_assignment(c) for c in cost]
    if isinstance(cost, Tensor) and cost.dim() == 2:
        return hungarian_assignment(cost)
    return hungarian_assignment_batched(cost)


def _check_sizes(n: int, m: int) -> None:
    if n > m:
        raise MatchingError(
            f"pool has {m} rows but {n} tokens are masked; one-to-one (hungarian) matching needs "
            f"at least one pool row per masked token: increase pool_size or lower mask_ratio"
        )
