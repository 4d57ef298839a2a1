"""Token-to-pool matching for the visual comprehension stage ("stage 1.5").

Each masked visual token is replaced by a row of a learnable visual token pool
``P``, chosen by a *matcher* on the Euclidean cost ``C[i, j] = ||x_i - P_j||``:

* ``nearest``   -- every token takes its cheapest pool row (rows may repeat);
* ``hungarian`` -- the one-to-one assignment (distinct rows) of minimum total
  cost, i.e. the rectangular linear assignment problem
  ``min sum_i C[i, s(i)]`` over injective ``s``: tokens -> pool rows.

Matchers return indices only; no gradient flows through the assignment.

How the exact solver stays fast
-------------------------------
A dense solver (``scipy.optimize.linear_sum_assignment``) scans every pool row
for every token. We solve a sparse problem instead, then *prove* its answer
optimal for the full dense matrix with LP duality.

1. **Candidates.** Each token's m costs are cut into blocks of 64 and one
   vectorised pass over the batch takes every block's minimum. A token keeps
   the entries of its best blocks that lie below ``t_i``, the next block
   minimum, so every entry it did *not* keep costs at least ``t_i``.
2. **Sparse solve.** Each image is solved exactly on its candidate edges by
   scipy's sparse Jonker-Volgenant (`_sparse_lap`); if every token's cheapest
   candidate is distinct, that is already the answer. If the candidates admit
   no full matching, the tokens of a Hall-violating set are offered the pool
   rows they like best (and, as a last resort, their exact top-k, up to n).
3. **Certificate.** The LP dual of the rectangular problem is
   ``max sum_i u_i + sum_j v_j`` s.t. ``u_i + v_j <= C[i, j]``, ``v_j <= 0``;
   an assignment s is optimal iff some feasible duals have
   ``u_i + v_s(i) = C[i, s(i)]`` and ``v_j = 0`` on unused pool rows. We take
   ``v`` = shortest-path distances over pool rows, with an arc
   ``s(i) -> j`` of length ``C[i, j] - C[i, s(i)]`` per candidate edge and a
   virtual source reaching every row at 0 (`_shortest_paths`), and
   ``u_i = C[i, s(i)] - v_s(i)``: every candidate edge is then feasible. A
   non-candidate edge has ``C[i, j] >= t_i`` and ``v_j <= 0``, so ``u_i <= t_i``
   certifies token i's whole row of m edges in one comparison.
4. **Repricing.** A token failing that comparison re-selects its candidates
   on the reduced costs ``C[i, j] - v_j`` (bound ``t_i`` now holds for them,
   and the comparison becomes ``u_i <= t_i + min_j (v_old_j - v_j)``); if even
   that cannot settle it, its row is scanned densely. Images that gained an
   edge with negative reduced cost are solved again.

Termination: with its n cheapest candidates a token always keeps an optimal
choice (one of its n cheapest pool rows is always free), and every round adds
edges. Duals, certificates and bookkeeping are vectorised over the batch; the
sparse solves and candidate re-selection run per image (or pair of images).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching
from torch import Tensor

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

#: Columns per block for candidate search (a smaller power of two if m is not a multiple).
BLOCK = 64
#: Blocks read per token for its first candidates.
INITIAL_BLOCKS = 4
#: Blocks read per token when its candidates are re-selected under new prices.
REPRICE_BLOCKS = 8
#: Exact top-k used the first time a token needs more candidates; then 4x each time.
GROW_K = 32
#: Times a Hall-violating set is offered new columns before its top-k grows instead.
COLUMN_ROUNDS = 3
#: Tokens linked to each offered column.
COLUMN_Q = 8
#: Images solved together in one sparse call.
LAP_GROUP = 2
#: Solve/certify rounds before an unfinished image falls back to scipy's dense solver.
MAX_ROUNDS = 50
#: Dual-feasibility tolerance, relative to the largest candidate cost.
REL_TOL = 1e-9


class MatchingError(ValueError):
    """The requested one-to-one matching is impossible (more tokens than pool rows)."""


# --------------------------------------------------------------------------- costs


def euclidean_cost(tokens: Tensor, pool: Tensor) -> Tensor:
    """Euclidean distances between tokens ``[..., n, D]`` and pool rows ``[m, D]``.

    Returns a float32 ``[..., n, m]`` tensor on ``tokens.device``, detached from
    autograd, computed as ``sqrt(max(||x||^2 + ||p||^2 - 2 x.p, 0))``.
    """
    with torch.no_grad():
        x = tokens.detach().float()
        p = pool.detach().to(device=x.device, dtype=torch.float32)
        sq = (x * x).sum(-1, keepdim=True) + (p * p).sum(-1) - 2.0 * (x @ p.T)
        return sq.clamp_min_(0.0).sqrt_()


# ------------------------------------------------------------------------ matchers


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
    Every result is certified optimal (see the module docstring); indices come
    back as LongTensors on the input's device. CPU tensor work runs on one
    intra-op thread (the setting is restored on return).
    """
    stacked = isinstance(costs, Tensor)
    if stacked and costs.dim() != 3:
        raise ValueError(f"expected a [B, n, m] tensor or a list of [n, m] tensors, got {tuple(costs.shape)}")
    for c in costs:
        if c.dim() != 2:
            raise ValueError(f"each cost must be [n, m], got shape {tuple(c.shape)}")
        _check_sizes(*c.shape)
    device = costs.device if stacked else (costs[0].device if len(costs) else torch.device("cpu"))
    with torch.no_grad(), _single_threaded(device):
        if stacked:  # one view over the whole batch: candidate search runs once
            full = _as_float(costs)
            views = [_CostView(full.reshape(-1, full.shape[-1]))]
            sizes = [tuple(costs.shape[1:])] * costs.shape[0]
        else:
            views = [_CostView(_as_float(c)) for c in costs]
            sizes = [tuple(c.shape) for c in costs]
        sigma = _Batch(views, sizes).solve()
        if stacked:
            out = torch.zeros(costs.shape[:2], dtype=torch.long)
            for b, s in enumerate(sigma):
                out[b] = torch.from_numpy(s)
            return out.to(costs.device)
        return [torch.from_numpy(s).to(c.device) for s, c in zip(sigma, costs)]


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


@contextlib.contextmanager
def _single_threaded(device: torch.device) -> Iterator[None]:
    """Run CPU tensor work on one intra-op thread, restoring the setting afterwards.

    The solver issues many small and medium CPU tensor ops; waking a second
    OpenMP thread costs more than it saves, and on a busy machine it can make
    a 1M-element op ~50x slower.
    """
    previous = torch.get_num_threads()
    if device.type != "cpu" or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_float(c: Tensor) -> Tensor:
    """Detached contiguous float32/float64 cost (half types are upcast exactly)."""
    c = c.detach()
    return (c if c.dtype in (torch.float32, torch.float64) else c.float()).contiguous()


# ------------------------------------------------------------------- cost access


class _CostView:
    """Row access to a ``[rows, m]`` cost: block minima, candidates, dense rows.

    The cost stays where it is (CPU or GPU); only small pieces are copied to
    host memory as float64 numpy arrays.
    """

    def __init__(self, cost: Tensor):
        self.cost = cost
        self.m = m = cost.shape[1]
        self.bs = next(b for b in (BLOCK, 32, 16, 8, 4, 2, 1) if b <= BLOCK and m % b == 0)
        self.nb = m // self.bs
        self.blocks = cost.reshape(-1, self.bs)  # [rows * nb, bs]
        # On CPU, numpy gathers are far cheaper than torch indexing.
        self.np = self.blocks.numpy() if cost.device.type == "cpu" else None
        self._minima: np.ndarray | None = None

    def dense(self, rows: np.ndarray, exact: bool = True) -> np.ndarray:
        """Dense rows as numpy: float64, or the cost's own precision if not exact."""
        out = self._rows(rows)
        return (out.double() if exact else out).cpu().numpy()

    def minima(self) -> np.ndarray:
        """Minimum of every block of every row, ``[rows, nb]`` (one pass, cached)."""
        if self._minima is None:
            self._minima = self.cost.view(-1, self.nb, self.bs).amin(-1).cpu().numpy()
        return self._minima

    def block_candidates(
        self, rows: np.ndarray, kb: int, price: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Candidates ``(row, col, cost)`` of the given rows, and bounds ``t``.

        Works on the reduced cost ``C[i, j] - price[j]`` (price 0 by default).
        A row keeps the entries of its kb best blocks that lie below t, its
        (kb+1)-th smallest block minimum; every other entry is then >= t.
        """
        kb = min(kb, self.nb)
        if price is None:  # blocks of the cost itself, minima already known
            minima, source, base = self.minima()[rows], self.np, rows
            if source is None:
                source = self.blocks
        else:  # reduced cost of just these rows, in the cost's precision
            shift = torch.as_tensor(price, dtype=self.cost.dtype, device=self.cost.device)
            reduced = self._rows(rows) - shift
            minima = reduced.view(len(rows), self.nb, self.bs).amin(-1).cpu().numpy()
            source = reduced.reshape(-1, self.bs)
            source = source.numpy() if self.np is not None else source
            base = np.arange(len(rows))
        order = np.argsort(minima, axis=-1)[:, : kb + 1]
        chosen = order[:, :kb]
        t = minima[np.arange(len(rows)), order[:, kb]] if kb < self.nb else np.full(len(rows), np.inf)
        flat = (base[:, None] * self.nb + chosen).ravel()
        if isinstance(source, np.ndarray):
            entries = np.take(source, flat, axis=0)
        else:
            entries = source[torch.as_tensor(flat, device=self.cost.device)].cpu().numpy()
        entries = entries.reshape(len(rows), kb * self.bs)
        hit = np.flatnonzero(entries < t[:, None])
        r, pos = np.divmod(hit, kb * self.bs)
        cols = chosen[r, pos // self.bs] * self.bs + pos % self.bs
        t = t.astype(np.float64)
        if price is None:
            return rows[r], cols, entries.reshape(-1)[hit].astype(np.float64), t
        # Reduced costs were rounded in the cost's precision: keep the bound safe.
        eps = float(torch.finfo(self.cost.dtype).eps)
        t -= 4 * eps * (np.abs(minima).max(initial=0.0) + np.abs(price).max(initial=0.0) + 1.0)
        return rows[r], cols, self.dense_at(rows[r], cols), t

    def _rows(self, rows: np.ndarray) -> Tensor:
        if self.np is not None:
            return torch.from_numpy(self.np.reshape(-1, self.m)[rows])
        return self.cost[torch.as_tensor(rows, device=self.cost.device)]

    def dense_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact float64 costs of individual entries."""
        if self.np is not None:
            return self.np.reshape(-1)[rows * self.m + cols].astype(np.float64)
        flat = torch.as_tensor(rows * self.m + cols, device=self.cost.device)
        return self.cost.reshape(-1)[flat].double().cpu().numpy()

    def topk(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Exact k cheapest entries ``(row, col, cost)`` of the rows; the k-th bounds the rest."""
        k = min(k, self.m)
        vals, cols = torch.topk(self._rows(rows), k, dim=-1, largest=False, sorted=True)
        vals, cols = vals.double().cpu().numpy(), cols.cpu().numpy().astype(np.int64)
        t = vals[:, -1] if k < self.m else np.full(len(rows), np.inf)
        return np.repeat(rows, k), cols.ravel(), vals.ravel(), t


# ------------------------------------------------------------------ exact solver


class _Batch:
    """Certified sparse assignment for a batch of images.

    Tokens of all images are numbered consecutively ("global rows"), and so are
    their pool rows ("global columns"), so that duals, certificates and
    bookkeeping are single vectorised operations over the whole batch.
    """

    def __init__(self, views: list[_CostView], sizes: list[tuple[int, int]]):
        self.views = views
        self.ns = np.array([n for n, _ in sizes], dtype=np.int64)
        self.ms = np.array([m for _, m in sizes], dtype=np.int64)
        self.row0 = np.concatenate([[0], np.cumsum(self.ns)])  # first global row of each image
        self.col0 = np.concatenate([[0], np.cumsum(self.ms)])  # first global column of each image
        self.inst = np.repeat(np.arange(len(sizes)), self.ns)  # image of each global row
        # Which view holds each global row, and where.
        view_rows = np.array([len(v.blocks) // v.nb for v in views], dtype=np.int64)
        self.view_of = np.repeat(np.arange(len(views)), view_rows)
        self.view_row = np.arange(int(self.row0[-1])) - np.repeat(np.cumsum(view_rows) - view_rows, view_rows)

        if not all(np.isfinite(v.minima()).all() for v in views):  # NaN reaches the block minima
            raise ValueError("cost matrix contains non-finite entries")
        n_total = int(self.row0[-1])
        self.sigma = np.full(n_total, -1)  # assigned global column per token
        self.k = np.zeros(n_total, dtype=np.int64)  # 0: block candidates, else exact top-k
        self.t = np.full(n_total, np.inf)  # bound on each token's non-candidate reduced costs...
        self.snap = np.zeros(n_total, dtype=np.int64)  # ...under prices self.prices[snap]
        self.prices = [np.zeros(int(self.col0[-1]))]
        self.edges = [_Edges.empty() for _ in sizes]  # candidate edges per image
        self.dirty = np.ones(len(sizes), dtype=bool)  # images to (re-)solve
        self.fallback = np.zeros(len(sizes), dtype=bool)  # images left to the dense solver
        self._set_candidates(np.arange(n_total))
        finite = [e.w for e in self.edges if len(e.w)]
        self.tol = REL_TOL * max(1.0, max((float(np.abs(w).max()) for w in finite), default=1.0))

    def solve(self) -> list[np.ndarray]:
        """Alternate sparse solves and certificates; return local columns per image."""
        self._take_distinct_argmins()
        for _ in range(MAX_ROUNDS):
            if not self.dirty.any():
                break
            dirty = np.flatnonzero(self.dirty)
            for group in np.array_split(dirty, -(-len(dirty) // LAP_GROUP)):
                self._solve_images(group)
            self.dirty[:] = False
            self._certify()
        self.fallback |= self.dirty
        out = []
        for b in range(len(self.ns)):
            rows = np.arange(self.row0[b], self.row0[b + 1])
            if self.fallback[b]:  # only reachable through floating-point corner cases
                dense = self._dense(rows)
                out.append(linear_sum_assignment(dense)[1].astype(np.int64))
            else:
                out.append(self.sigma[rows] - self.col0[b])
        return out

    # ------------------------------------------------------------ candidates

    def _per_view(self, rows: np.ndarray):
        for v in np.unique(self.view_of[rows]):
            mine = rows[self.view_of[rows] == v]
            yield self.views[v], mine, self.view_row[mine]

    def _dense(self, rows: np.ndarray, exact: bool = True) -> np.ndarray:
        """Dense cost rows of tokens of one image, ``[len(rows), m]`` (float64 if exact)."""
        parts = [view.dense(local, exact) for view, _, local in self._per_view(rows)]
        return np.concatenate(parts)[:, : self.ms[self.inst[rows[0]]]]

    def _set_candidates(self, rows: np.ndarray) -> None:
        """(Re)build the candidate edges of tokens: block candidates, or exact top-k."""
        found = []
        for view, mine, local in self._per_view(rows):
            for k in np.unique(self.k[mine]):
                sel = self.k[mine] == k
                get = view.topk if k else view.block_candidates
                r, c, w, t = get(local[sel], int(k) if k else INITIAL_BLOCKS)
                glob = mine[sel]
                self.t[glob], self.snap[glob] = t, 0
                r = glob[np.searchsorted(local[sel], r)]
                found.append(_Edges(r, c + self.col0[self.inst[r]], w))
        new = _Edges.concat(found)
        new = new.select(np.argsort(new.r, kind="stable"))
        if not np.isfinite(new.w).all():
            raise ValueError("cost matrix contains non-finite entries")
        for b in np.unique(self.inst[rows]):
            old = self.edges[b]
            lo, hi = np.searchsorted(new.r, [self.row0[b], self.row0[b + 1]])
            keep = old.select(~np.isin(old.r, rows))
            self.edges[b] = keep.union(_Edges(new.r[lo:hi], new.c[lo:hi], new.w[lo:hi]))
            self.dirty[b] = True

    # ----------------------------------------------------------- sparse solve

    def _solve_images(self, images: np.ndarray) -> None:
        """Optimal assignment of some images, each restricted to its candidate edges.

        The images are solved together as one block-diagonal problem, which
        saves scipy's per-call overhead.
        """
        widened = np.zeros(len(self.ns), dtype=np.int64)
        while True:
            images = images[~self.fallback[images]]
            rows = np.concatenate([np.arange(self.row0[b], self.row0[b + 1]) for b in images] + [np.zeros(0, np.int64)])
            if len(rows) == 0:
                return
            sigma, short = _sparse_lap(_Edges.concat([self.edges[b] for b in images]), rows)
            if sigma is not None:
                self.sigma[rows] = sigma
                return
            # No full matching: a Hall-violating set of tokens has too few
            # candidate columns between them. First offer them new columns;
            # if that keeps failing, widen their own top-k (k = n always works).
            for b in np.unique(self.inst[short]):
                mine = short[self.inst[short] == b]
                widened[b] += 1
                if widened[b] <= COLUMN_ROUNDS:
                    self._add_columns(b, mine)
                    continue
                mine = mine[self.k[mine] < self.ns[b]]
                if len(mine) == 0:
                    self.fallback[b] = True  # impossible: top-n candidates always suffice
                    continue
                self.k[mine] = np.minimum(np.maximum(4 * self.k[mine], GROW_K), self.ns[b])
                self._set_candidates(mine)

    def _take_distinct_argmins(self) -> None:
        """Shortcut: an image whose tokens' cheapest candidates are all distinct is solved."""
        e = _Edges.concat(self.edges)
        if len(e.r) == 0:
            return
        starts = np.flatnonzero(np.r_[True, e.r[1:] != e.r[:-1]])
        low = np.minimum.reduceat(e.w, starts)
        best = np.flatnonzero(e.w == np.repeat(low, np.diff(np.append(starts, len(e.r)))))
        best = best[np.r_[True, e.r[best][1:] != e.r[best][:-1]]]  # first cheapest per token
        rows, cols = e.r[best], e.c[best]
        clash = np.bincount(cols, minlength=int(self.col0[-1]))[cols] > 1
        clash |= (low > self.t[rows]) | (self.snap[rows] != 0)  # not provably the row minimum
        bad = np.zeros(len(self.ns), dtype=bool)
        bad[self.inst[rows[clash]]] = True
        has = np.bincount(self.inst[rows], minlength=len(self.ns))  # tokens with candidates
        solved = ~bad & (has == self.ns)
        mine = solved[self.inst[rows]]
        self.sigma[rows[mine]] = cols[mine]
        self.dirty[solved] = False

    def _add_columns(self, b: int, short: np.ndarray) -> None:
        """Connect a Hall-violating token set to the pool rows it likes best.

        The set needs ``d = |set| - |its columns|`` more columns. Take the 2d + 8
        other columns with the lowest cost for any token of the set, and link
        each to its COLUMN_Q cheapest tokens of the set.
        """
        e = self.edges[b]
        taken = np.unique(e.c[np.isin(e.r, short)]) - self.col0[b]
        dense = self._dense(short, exact=False)  # [|set|, m], cost precision
        best = dense.min(0).astype(np.float64)
        best[taken] = np.inf
        want = min(int(np.isfinite(best).sum()), 2 * (len(short) - len(taken)) + 8)
        if want <= 0:
            return
        cols = np.argpartition(best, want - 1)[:want]
        sub = dense[:, cols]
        q = min(COLUMN_Q, len(short))
        top = np.argpartition(sub, q - 1, axis=0)[:q] if q < len(short) else np.arange(q)[:, None].repeat(want, 1)
        ci = np.tile(np.arange(want), q)
        ri = top.ravel()
        new = _Edges(short[ri], cols[ci] + self.col0[b], sub[ri, ci].astype(np.float64))
        self.edges[b] = e.union(new.select(np.lexsort((new.c, new.r))))

    # ------------------------------------------------------------ certificate

    def _certify(self) -> None:
        """Prove optimality where possible; queue the images that need more edges."""
        edges = _Edges.concat([e for b, e in enumerate(self.edges) if not self.fallback[b]])
        if len(edges.r) == 0:
            return
        own = np.zeros(len(self.sigma))
        hit = edges.c == self.sigma[edges.r]
        own[edges.r[hit]] = edges.w[hit]
        arcs = edges.select(~hit)
        v = _shortest_paths(
            self.sigma[arcs.r], arcs.c, arcs.w - own[arcs.r], int(self.col0[-1]), len(self.sigma), self.tol * 1e-3
        )
        if v is None:  # rounding produced a negative cycle
            self.fallback[np.unique(self.inst[edges.r])] = True
            return
        used = np.zeros(len(v), dtype=bool)
        used[self.sigma[self.sigma >= 0]] = True
        v[~used] = 0.0  # complementary slackness; any inconsistency shows up below
        u = own - v[self.sigma]

        # Candidate edges are feasible by construction: a violation there is rounding.
        broken = edges.w - u[edges.r] - v[edges.c] < -self.tol
        self.fallback[np.unique(self.inst[edges.r[broken]])] = True
        # Non-candidate edges: token i's candidates were chosen under prices P
        # (self.prices[self.snap[i]]) with C[i, j] - P[j] >= t_i for every
        # other j, so C[i, j] - v[j] >= t_i + min_j (P[j] - v[j]) >= u_i settles
        # the whole row in one comparison.
        slack = np.stack([self._image_min(p - v) for p in self.prices])
        loose = (u > self.t + slack[self.snap, self.inst] + self.tol) & ~self.fallback[self.inst]
        if loose.any():
            self._reprice(np.flatnonzero(loose), u, v)

    def _image_min(self, x: np.ndarray) -> np.ndarray:
        """Minimum of a per-column vector over each image's columns."""
        out = np.full(len(self.ms), np.inf)
        has = self.ms > 0
        out[has] = np.minimum.reduceat(x, self.col0[:-1][has])
        return out

    def _reprice(self, rows: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Re-select candidates of loose tokens under the current prices -v.

        New candidate edges that violate the current duals, and (for tokens
        the new bound still cannot settle) violations found by a dense scan,
        make the image dirty; otherwise the tokens are certified as they are.
        """
        snap = len(self.prices)
        self.prices.append(v.copy())
        for view, mine, local in self._per_view(rows):
            for b in np.unique(self.inst[mine]):
                sel = self.inst[mine] == b
                glob, cols = mine[sel], self.col0[b] + np.arange(self.ms[b])
                r, c, w, t = view.block_candidates(local[sel], REPRICE_BLOCKS, v[cols])
                found = [_Edges(glob[np.searchsorted(local[sel], r)], c + self.col0[b], w)]
                self.t[glob], self.snap[glob] = t, snap
                unsure = glob[u[glob] > t + self.tol]
                if len(unsure):  # the new bound is not enough: scan these rows exactly
                    dense = self._dense(unsure)
                    ri, cj = np.nonzero(dense - u[unsure, None] - v[None, cols] < -self.tol)
                    found.append(_Edges(unsure[ri], cols[cj], dense[ri, cj]))
                new = _Edges.concat(found)
                self.edges[b] = self.edges[b].union(new)
                if (new.w - u[new.r] - v[new.c] < -self.tol).any():
                    self.dirty[b] = True


class _Edges:
    """Edges (token r, pool row c, cost w); after `union`, unique and sorted by (r, c)."""

    def __init__(self, r: np.ndarray, c: np.ndarray, w: np.ndarray):
        self.r, self.c, self.w = r, c, w

    @staticmethod
    def empty() -> "_Edges":
        return _Edges(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))

    @staticmethod
    def concat(parts: list["_Edges"]) -> "_Edges":
        if not parts:
            return _Edges.empty()
        return _Edges(*(np.concatenate([getattr(p, a) for p in parts]) for a in "rcw"))

    def select(self, mask: np.ndarray) -> "_Edges":
        return _Edges(self.r[mask], self.c[mask], self.w[mask])

    def union(self, other: "_Edges") -> "_Edges":
        both = _Edges.concat([self, other])
        _, keep = np.unique(both.r * (int(both.c.max(initial=0)) + 1) + both.c, return_index=True)
        return both.select(keep)


def _sparse_lap(edges: _Edges, rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Optimal column per token of ``rows`` using only ``edges`` (sorted by token, column).

    Returns ``(sigma, [])``, or ``(None, tokens)`` with a Hall-violating set of
    tokens if the edges admit no full matching.

    scipy's LAPJVsp skips its fast initialisation on rectangular inputs, so the
    ``r x s`` problem (r tokens, s candidate columns) is posed as an equivalent
    square one: a slack row per column and a slack column per token, with a
    slack edge (slack row of j, slack column of i) for every candidate edge
    (i, j), and (slack row of j, j) for every column. In a perfect matching
    each token's slack column takes the slack row of a column some token uses,
    and every other slack row keeps its own column: slack always costs s.
    """
    col_lo = int(edges.c.min()) if len(edges.c) else 0
    m = int(edges.c.max()) + 1 - col_lo if len(edges.c) else 0
    r, e = len(rows), len(edges.r)
    present = np.zeros(m + 1, dtype=np.int32)
    present[edges.c - col_lo + 1] = 1
    local = np.cumsum(present)  # local[x]: number of present columns before offset x
    cols = np.flatnonzero(present[1:]) + col_lo
    s = len(cols)
    c_local = local[edges.c - col_lo].astype(np.int32)
    r_local = np.searchsorted(rows, edges.r)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r_local, minlength=r))]).astype(np.int32)
    if s < r or (np.diff(indptr) == 0).any():  # cheap infeasibility checks
        return None, _hall(c_local, indptr, rows, s)
    # LAPJVsp drops zero weights: shift every token to strictly positive costs
    # (a per-token constant does not change the optimal assignment).
    w = edges.w - np.repeat(np.minimum.reduceat(edges.w, indptr[:-1]), np.diff(indptr)) + 1.0
    # Slack row of column j: its own column j first, then the slack columns
    # s + i of the tokens i having j as a candidate (in token order).
    by_col = np.argsort(c_local, kind="stable")
    slack_ptr = np.concatenate([[0], np.cumsum(np.bincount(c_local, minlength=s) + 1)])
    slack_idx = np.empty(slack_ptr[-1], dtype=np.int32)
    own = np.zeros(len(slack_idx), dtype=bool)
    own[slack_ptr[:-1]] = True
    slack_idx[own] = np.arange(s)
    slack_idx[~own] = s + r_local[by_col]
    square = sp.csr_array(
        (
            np.concatenate([w, np.ones(len(slack_idx))]),
            np.concatenate([c_local, slack_idx]),
            np.concatenate([indptr, e + slack_ptr[1:]]).astype(np.int32),
        ),
        shape=(r + s, s + r),
    )
    try:
        _, match = min_weight_full_bipartite_matching(square)
    except ValueError:  # no full matching
        return None, _hall(c_local, indptr, rows, s)
    return cols[match[:r]], rows[:0]


def _hall(c_local: np.ndarray, indptr: np.ndarray, rows: np.ndarray, s: int) -> np.ndarray:
    """Tokens of ``rows`` forming a Hall-violating set of the compact candidate graph."""
    bipartite = sp.csr_array((np.ones(len(c_local)), c_local, indptr), shape=(len(rows), s))
    match = maximum_bipartite_matching(bipartite, perm_type="column")
    return rows[_hall_violators(bipartite, match)]


def _hall_violators(bipartite: sp.csr_array, match: np.ndarray) -> np.ndarray:
    """Local tokens whose candidates cover fewer columns than their number (König).

    From every token left unmatched by a maximum matching, follow alternating
    paths (any edge to a column, the matching edge back to a token).
    """
    token_of = np.full(bipartite.shape[1], -1)
    token_of[match[match >= 0]] = np.flatnonzero(match >= 0)
    r_local = np.repeat(np.arange(bipartite.shape[0]), np.diff(bipartite.indptr))
    reached = match < 0
    while True:
        more = token_of[np.unique(bipartite.indices[reached[r_local]])]
        more = more[more >= 0]
        more = more[~reached[more]]
        if len(more) == 0:
            return np.flatnonzero(reached)
        reached[more] = True


def _shortest_paths(
    src: np.ndarray, dst: np.ndarray, length: np.ndarray, n_nodes: int, max_arcs: int, tiny: float
) -> np.ndarray | None:
    """Distances from a virtual source joined to every node at 0 (Bellman-Ford).

    Label-correcting and vectorised: each sweep relaxes only the arcs leaving
    nodes whose distance just improved (at first: the negative arcs). Returns
    None on a negative cycle (a shortest path longer than ``max_arcs`` arcs).
    """
    order = np.argsort(src)
    src, dst, length = src[order], dst[order], length[order]
    start = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n_nodes))])
    dist = np.zeros(n_nodes)
    arc = np.flatnonzero(length < -tiny)
    for _ in range(max_arcs + 1):
        reach = dist[src[arc]] + length[arc]
        better = reach < dist[dst[arc]] - tiny
        if not better.any():
            return dist
        np.minimum.at(dist, dst[arc[better]], reach[better])
        frontier = np.unique(dst[arc[better]])
        count = start[frontier + 1] - start[frontier]
        arc = np.repeat(start[frontier] - np.cumsum(count) + count, count) + np.arange(count.sum())
    return None
