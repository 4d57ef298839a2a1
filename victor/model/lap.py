"""Exact rectangular linear assignment, compiled with numba, that reads costs lazily.

``solve(cost[B, n, m]) -> [B, n]``: for each instance, distinct columns ``s(i)``
minimising ``sum_i cost[i, s(i)]`` (n <= m). The algorithm is the shortest
augmenting path method (Jonker-Volgenant; Crouse 2016 for rectangular costs, what
scipy's dense ``linear_sum_assignment`` runs) with one change: rows are read
lazily, cheapest entries first, and only as far as Dijkstra can need them.

Duals. Rows carry ``u``, columns ``v <= 0`` (0 on unused columns), and every
reduced cost ``c[i, j] - u[i] - v[j]`` stays >= 0 with equality on assigned
pairs: the LP optimality conditions, so every result is an exact optimum.

Lazy rows. One vectorised pass takes the minimum of each block of ``BLOCK``
columns. Row i has a *level* ``t[i]`` (a block minimum): its entries below
``t[i]`` have been read (they lie in blocks whose minimum is below it) and
every other entry costs at least ``t[i]``, so its reduced cost is at least
``t[i] - u[i]`` (``v <= 0``). When Dijkstra scans row i at distance ``d`` it
relaxes the read entries and queues the event "read more of row i" at key
``d + t[i] - u[i]``; if that event comes before the sink, the level rises to the
next block minimum and the newly covered entries are relaxed. Columns are
therefore settled exactly as on the dense matrix, and the dual update keeps
every reduced cost >= 0, including the ones never read. Most rows read one
entry or two.

Shared preferences. When one column term dominates the cost (pool rows of norm
~sqrt(dim), the published init), every row's cheapest column is the same: the
initial phase assigns a row or two and each other row needs a search through all
the rows before it (O(n^2) scans, the dense solver's and scipy's cost). Before
going dense, `_solve_reduced` drops columns that n others dominate, squares the
problem up with dummy rows and subtracts each column's minimum, all exact; rows
then mostly prefer distinct columns and the lazy solver runs as usual.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

#: Columns per block (one block minimum each).
BLOCK = 16


@njit(cache=True)
def _block_minima(row, out):
    """``out[b] = min(row[b*BLOCK:(b+1)*BLOCK])``; returns the number of non-finite entries.

    The fixed-width inner loop vectorises: this pass runs at memory speed.
    """
    m = row.shape[0]
    full = m // BLOCK
    bad = 0
    for b in range(full):
        x = row[b * BLOCK]
        for k in range(BLOCK):
            y = row[b * BLOCK + k]
            x = min(x, y)
            bad += (y != y) | (abs(y) == np.inf)
        out[b] = x
    if full < out.shape[0]:
        x = row[full * BLOCK]
        for j in range(full * BLOCK, m):
            y = row[j]
            x = min(x, y)
            bad += (y != y) | (abs(y) == np.inf)
        out[full] = x
    return bad


@njit(cache=True, inline="always")
def _sift_up(keys, items, pos, i, key, item):
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= key:
            break
        keys[i] = keys[parent]
        items[i] = items[parent]
        pos[items[i]] = i
        i = parent
    keys[i] = key
    items[i] = item
    pos[item] = i


@njit(cache=True, inline="always")
def _offer(keys, items, pos, size, item, key):
    """Indexed min-heap: insert ``item`` or lower its key; returns the new size."""
    i = pos[item]
    if i < 0:
        _sift_up(keys, items, pos, size, key, item)
        return size + 1
    if key < keys[i]:
        _sift_up(keys, items, pos, i, key, item)
    return size


@njit(cache=True, inline="always")
def _pop(keys, items, pos, size):
    """Remove the minimum (read keys[0], items[0] first); returns the new size."""
    pos[items[0]] = -1
    size -= 1
    if size == 0:
        return 0
    key, item = keys[size], items[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] < keys[child]:
            child += 1
        if keys[child] >= key:
            break
        keys[i] = keys[child]
        items[i] = items[child]
        pos[items[i]] = i
        i = child
    keys[i] = key
    items[i] = item
    pos[item] = i
    return size


@njit(cache=True, inline="always")
def _raise_level(bmin_row, level, order_row, q, i):
    """Row i's blocks with minimum ``level`` join its read list; returns the next level
    (the smallest block minimum above ``level``; inf when every block is read)."""
    nxt = np.inf
    k = q[i]
    for b in range(bmin_row.shape[0]):
        x = bmin_row[b]
        if x == level:
            order_row[k] = b
            k += 1
        elif level < x < nxt:
            nxt = x
    q[i] = k
    return nxt


@njit(cache=True, inline="always")
def _relax(C, r, d, ur, lo_val, hi_val, order_row, q_r, v, spc, path, done, touched, n_touched,
           keys, items, pos, size):
    """Offer every read column j of row r with ``lo_val <= C[r, j] < hi_val`` at distance
    ``d + C[r, j] - u[r] - v[j]``; returns the new (n_touched, heap size)."""
    m = C.shape[1]
    for k in range(q_r):
        lo = order_row[k] * BLOCK
        hi = min(lo + BLOCK, m)
        for j in range(lo, hi):
            c = C[r, j]
            if c < lo_val or c >= hi_val or done[j]:
                continue
            val = d + (c - ur) - v[j]
            if val < spc[j]:
                if spc[j] == np.inf:
                    touched[n_touched] = j
                    n_touched += 1
                spc[j] = val
                path[j] = r
                size = _offer(keys, items, pos, size, j, val)
    return n_touched, size


@njit(cache=True, inline="always")
def _augment(sink, root, path, row4col, col4row):
    """Flip the alternating path that Dijkstra found from ``root`` to the free column ``sink``;
    returns the number of rows on it (1: the root takes a free column directly)."""
    j = sink
    rows = 1
    while True:
        r = path[j]
        row4col[j] = r
        prev = col4row[r]
        col4row[r] = j
        if r == root:
            return rows
        j = prev
        rows += 1


#: Status codes: solved lazily; a NaN/inf cost; costs too uniform across rows for lazy reading to
#: pay off (the caller solves that instance densely); solved lazily after `_solve_reduced`'s
#: exact reduction.
OK, NOT_FINITE, DENSE, REDUCED = 0, 1, 2, 3
#: Lazy solving gives up (DENSE) when fewer than this share of rows can take their cheapest
#: column at once, or after reading this many times the whole matrix's worth of blocks.
MIN_GREEDY_SHARE = 0.25
MAX_READS = 4
#: `_solve_reduced` gives up (DENSE) when the columns it keeps exceed the rows by more than this
#: share of the rows (each surplus column adds a dummy row, and the dummy rows are all alike).
MAX_DUMMY_SHARE = 1.0

#: Per-instance diagnostics of `solve_with_stats`, in this order (cost units for the duals).
STATS = (
    "greedy",         # rows the initial phase assigns (a row whose cheapest column is still free;
                      # dummy rows included)
    "augmentations",  # Dijkstra searches, one per row the initial phase left free
    "path_rows",      # rows on the augmenting paths, all searches together (1 per search at least)
    "path_max",       # rows on the longest augmenting path
    "scans",          # rows Dijkstra scanned (roots included), all searches together
    "settled",        # columns Dijkstra settled, all searches together
    "entries",        # cost entries Dijkstra relaxed: the work
    "u_rise_mean",    # row dual at the end minus the row's cheapest cost, mean over rows
    "u_rise_max",     # ... and its largest value
    "v_cols",         # columns whose dual fell below 0 (prices on contested columns)
    "v_depth_max",    # the largest such price, -min(v)
    "dense",          # 1 when the instance was solved by the dense fallback
    "reduced",        # 1 when solved after `_solve_reduced`'s reduction (the counts above are then
                      # the reduced square problem's; "greedy" stays the raw costs' initial phase)
    "kept_cols",      # columns `_solve_reduced` kept (0: not tried)
    "dummy_rows",     # dummy rows it added (kept columns - rows)
    "greedy_reduced", # rows of the reduced problem its initial phase assigns
)
N_STATS = len(STATS)


@njit(cache=True)
def _dual_stats(st, u, rowmin, v):
    """Record how far the duals moved: ``u - rowmin`` per row and the negative ``v``."""
    n = u.shape[0]
    total, top = 0.0, 0.0
    for i in range(n):
        x = u[i] - rowmin[i]
        total += x
        top = max(top, x)
    st[7] = total / n
    st[8] = top
    cols, depth = 0, 0.0
    for j in range(v.shape[0]):
        if v[j] < 0:
            cols += 1
            depth = max(depth, -v[j])
    st[9] = cols
    st[10] = depth


@njit(cache=True)
def _solve_one(C, col4row, st, n_dummy):
    """Assign the rows of ``C [n, m]`` to distinct columns in ``col4row [n]``; returns a status.

    ``st``: `STATS` are written there when it has room for them (length 0: not recorded).
    ``n_dummy``: the last rows are that many copies of one row (`_solve_reduced`'s dummy rows);
    they start on that row's ``n_dummy`` cheapest columns, at one dual."""
    want = st.shape[0] >= N_STATS
    n, m = C.shape
    nb = (m + BLOCK - 1) // BLOCK
    inf = np.inf

    # Block minima; each row reads its cheapest block(s) and gets the next block minimum as level.
    bmin = np.empty((n, nb), C.dtype)
    order = np.empty((n, nb), np.int64)  # row i's read blocks: order[i, :q[i]]
    q = np.zeros(n, np.int64)
    t = np.empty(n, np.float64)  # levels
    u = np.empty(n, np.float64)
    for i in range(n):
        if _block_minima(C[i], bmin[i]):
            return NOT_FINITE
        u[i] = bmin[i].min()
        t[i] = _raise_level(bmin[i], u[i], order[i], q, i)

    # u = row minima with v = 0 is dual feasible; a row whose cheapest column is free takes it.
    v = np.zeros(m, np.float64)
    row4col = np.full(m, -1, np.int64)
    col4row[:] = -1
    taken = 0
    first_dummy = n - n_dummy
    if n_dummy:
        # Identical rows w: the k-th takes w's k-th cheapest column j, with u = w's n_dummy-th
        # cheapest cost and v[j] = w[j] - u <= 0. Pairs are tight, and w[j] - u - v[j] >= 0
        # everywhere (0 on those columns, w[j] >= u with v = 0 elsewhere); other rows' reduced
        # costs only grow where v < 0. Their reading levels rise to u (entries below it read).
        cheapest = np.argsort(C[first_dummy])[:n_dummy]
        ud = C[first_dummy, cheapest[n_dummy - 1]]
        for k in range(n_dummy):
            i, j = first_dummy + k, cheapest[k]
            col4row[i], row4col[j], v[j] = j, i, C[first_dummy, j] - ud
            u[i] = ud
            while t[i] <= ud:
                t[i] = _raise_level(bmin[i], t[i], order[i], q, i)
        taken = n_dummy
    for i in range(n - n_dummy):
        lo = order[i, 0] * BLOCK
        for j in range(lo, min(lo + BLOCK, m)):
            if C[i, j] == u[i]:
                if row4col[j] < 0:
                    row4col[j] = i
                    col4row[i] = j
                    taken += 1
                break
    if want:
        st[0] = taken
    if taken < MIN_GREEDY_SHARE * n:
        return DENSE
    budget = MAX_READS * n * nb  # blocks read before giving up

    spc = np.full(m, inf)  # Dijkstra: shortest reduced path cost to each column
    path = np.full(m, -1, np.int64)
    done = np.zeros(m, np.bool_)
    dist = np.zeros(n, np.float64)  # distance at which each row was reached
    touched = np.empty(m, np.int64)
    scanned = np.empty(n, np.int64)
    # One heap, two kinds of event: item j < m settles column j; item m + r reads more of row r.
    keys = np.empty(m + n, np.float64)
    items = np.empty(m + n, np.int64)
    pos = np.full(m + n, -1, np.int64)
    n_aug = n_path = path_max = n_scans = n_settled = n_entries = 0

    for root in range(n):
        if col4row[root] >= 0:
            continue
        n_aug += 1
        n_touched = 0
        n_scanned = 0
        size = 0
        sink = -1
        min_val = 0.0
        r, d, lo_val = root, 0.0, -inf
        dist[root] = 0.0
        dummy_seen = False
        while sink < 0:
            # Row r, reached at distance d: relax its entries in [lo_val, level). The dummy rows
            # keep equal duals (all are reached at one distance in a search, or none), so the
            # first one reached offers every column what any of them would: the others skip.
            n_scans += lo_val == -inf  # a row reached (not one reading further)
            if r < first_dummy or lo_val > -inf or not dummy_seen:
                dummy_seen |= r >= first_dummy
                budget -= q[r]
                if budget < 0:
                    return DENSE
                n_entries += q[r] * BLOCK
                n_touched, size = _relax(C, r, d, u[r], lo_val, t[r], order[r], q[r], v, spc, path, done,
                                         touched, n_touched, keys, items, pos, size)
                if t[r] < inf:  # its unread entries cost >= t[r]: come back when Dijkstra gets there
                    size = _offer(keys, items, pos, size, m + r, d + t[r] - u[r])
            # Next event: settle the cheapest column, or read more of a row.
            key, item = keys[0], items[0]
            size = _pop(keys, items, pos, size)
            if item >= m:
                r = item - m
                d, lo_val = dist[r], t[r]
                t[r] = _raise_level(bmin[r], t[r], order[r], q, r)
                continue
            done[item] = True
            n_settled += 1
            if row4col[item] < 0:
                sink, min_val = item, key
                break
            r, d, lo_val = row4col[item], key, -inf
            dist[r] = d
            scanned[n_scanned] = r
            n_scanned += 1

        for k in range(size):
            pos[items[k]] = -1
        # Dual update: reduced costs stay >= 0 and assigned pairs tight. Then augment.
        u[root] += min_val
        for k in range(n_scanned):
            r = scanned[k]
            u[r] += min_val - dist[r]
        for k in range(n_touched):
            j = touched[k]
            if done[j]:
                v[j] -= min_val - spc[j]
            spc[j] = inf
            done[j] = False
        rows = _augment(sink, root, path, row4col, col4row)
        n_path += rows
        path_max = max(path_max, rows)
    if want:
        st[1], st[2], st[3], st[4], st[5], st[6] = n_aug, n_path, path_max, n_scans, n_settled, n_entries
        rowmin = np.empty(n)
        for i in range(n):
            rowmin[i] = bmin[i].min()
        _dual_stats(st, u, rowmin, v)
    return OK


@njit(cache=True)
def _solve_reduced(C, col4row, st):
    """The instance as an equivalent square problem whose rows no longer share their preferences,
    solved lazily; returns REDUCED, or DENSE when that does not pay off (the caller goes dense).

    For costs dominated by a per-column term (pool rows of norm ~sqrt(dim), the published init),
    every row's cheapest column is the same one: the initial phase assigns one row or two and every
    other row needs a long search. Three exact steps undo that:

    1. Dominance pruning. Let ``lo[j]``/``hi[j]`` be column j's smallest/largest cost, N the n
       columns of smallest ``hi`` and ``T`` the largest ``hi`` in N. A column j outside N with
       ``lo[j] >= T`` is dominated by n columns (``C[i, k] <= T <= C[i, j]`` for every row i and
       k in N); in an optimum using j, one of those n is unused (the other n - 1 rows hold at
       most n - 1 columns) and moving j's row there costs no more. So some optimum uses only the
       kept columns (N and those with ``lo < T``).
    2. Square up: with n' kept columns, add n' - n dummy rows of cost 0. Every assignment of the
       real rows extends to a perfect matching at the same cost, and back.
    3. Column reduction: in a perfect matching every column is used exactly once, so subtracting
       ``lo[j]`` from column j changes every matching's cost by the same constant. (Not so in the
       rectangular problem, where it would favour the columns with large ``lo``.) Each column's
       cheapest real row now costs 0 there, so rows mostly prefer distinct columns.
    """
    n, m = C.shape
    inf = np.inf
    lo = np.full(m, inf)
    hi = np.full(m, -inf)
    for i in range(n):
        for j in range(m):
            c = C[i, j]
            lo[j] = min(lo[j], c)
            hi[j] = max(hi[j], c)
    order = np.argsort(hi)
    T = hi[order[n - 1]]
    keep = lo < T
    for k in range(n):
        keep[order[k]] = True
    cols = np.flatnonzero(keep)
    m2 = cols.shape[0]
    want = st.shape[0] >= N_STATS
    if want:
        st[13], st[14] = m2, m2 - n
    if m2 - n > MAX_DUMMY_SHARE * n:
        return DENSE
    S = np.empty((m2, m2))
    top = -inf
    for k in range(m2):
        top = max(top, lo[cols[k]])
    for i in range(n):
        for k in range(m2):
            S[i, k] = C[i, cols[k]] - lo[cols[k]]
    for i in range(n, m2):
        for k in range(m2):
            S[i, k] = top - lo[cols[k]]  # a dummy row: 0 before the reduction, plus a row constant
    sub = np.empty(m2, np.int64)
    greedy = st[0] if want else 0.0
    status = _solve_one(S, sub, st, m2 - n)
    if want:
        st[15], st[0], st[12] = st[0], greedy, status == OK
    if status != OK:
        return DENSE
    for i in range(n):
        col4row[i] = cols[sub[i]]
    return REDUCED


@njit(cache=True)
def _solve_dense(C, col4row):
    """Plain shortest augmenting path on the dense matrix (Crouse 2016): for costs where the
    lazy solver gives up, e.g. when every row prefers the same few columns."""
    _dense(C, col4row, np.empty(0))


@njit(cache=True)
def _dense(C, col4row, st):
    """`_solve_dense`, recording `STATS` in ``st`` when it has room for them."""
    want = st.shape[0] >= N_STATS
    n_path = path_max = n_scans = n_settled = n_entries = 0
    n, m = C.shape
    inf = np.inf
    u = np.zeros(n)
    v = np.zeros(m)
    row4col = np.full(m, -1, np.int64)
    col4row[:] = -1
    spc = np.empty(m)
    path = np.empty(m, np.int64)
    in_tree = np.zeros(n, np.bool_)
    settled = np.zeros(m, np.bool_)
    remaining = np.empty(m, np.int64)
    for root in range(n):
        spc[:] = inf
        in_tree[:] = False
        settled[:] = False
        for k in range(m):
            remaining[k] = m - 1 - k
        n_remaining = m
        min_val = 0.0
        i = root
        sink = -1
        while sink < 0:
            in_tree[i] = True
            n_scans += 1
            n_entries += n_remaining
            best, at = inf, -1
            ui = u[i]
            for k in range(n_remaining):
                j = remaining[k]
                val = min_val + (C[i, j] - ui) - v[j]
                if val < spc[j]:
                    path[j] = i
                    spc[j] = val
                if spc[j] < best or (spc[j] == best and row4col[j] < 0):
                    best, at = spc[j], k
            min_val = best
            j = remaining[at]
            settled[j] = True
            n_settled += 1
            n_remaining -= 1
            remaining[at] = remaining[n_remaining]
            if row4col[j] < 0:
                sink = j
            else:
                i = row4col[j]
        u[root] += min_val
        for i in range(n):
            if in_tree[i] and i != root:
                u[i] += min_val - spc[col4row[i]]
        for j in range(m):
            if settled[j]:
                v[j] -= min_val - spc[j]
        rows = _augment(sink, root, path, row4col, col4row)
        n_path += rows
        path_max = max(path_max, rows)
    if want:
        st[1], st[2], st[3], st[4], st[5], st[6] = n, n_path, path_max, n_scans, n_settled, n_entries
        rowmin = np.empty(n)
        for i in range(n):
            rowmin[i] = C[i].min()
        _dual_stats(st, u, rowmin, v)
        st[11] = 1


@njit(cache=True, parallel=True)
def _solve_batch(C, out, status, stats, reduce):
    for b in prange(C.shape[0]):
        status[b] = _solve_one(C[b], out[b], stats[b], 0)
        if status[b] == DENSE and reduce:
            status[b] = _solve_reduced(C[b], out[b], stats[b])
        if status[b] == DENSE:
            _dense(C[b], out[b], stats[b])


class NonFiniteCost(ValueError):
    """A cost matrix holds NaN or an infinity."""


def solve(cost: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Exact assignment for ``cost [B, n, m]`` (float32 or float64, n <= m) -> int64 ``[B, n]``.

    Instances run in parallel on up to ``threads`` numba threads (default: numba's
    own setting).
    """
    return solve_with_status(cost, threads)[0]


def solve_with_status(cost: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`solve`, plus each instance's status: ``OK`` (lazy solver), ``REDUCED`` (lazy solver after
    `_solve_reduced`'s exact reduction) or ``DENSE`` (dense fallback)."""
    out, status, _ = _run(cost, threads, stats=False, reduce=True)
    return out, status


def solve_with_stats(
    cost: np.ndarray, threads: int | None = None, reduce: bool = True
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """`solve_with_status`, plus one dict of `STATS` per instance (what the solver did; for
    benchmarks and diagnosis, the plain call records nothing). ``reduce=False`` skips
    `_solve_reduced` (instances the lazy solver gives up on go straight to the dense solver)."""
    out, status, stats = _run(cost, threads, stats=True, reduce=reduce)
    return out, status, [dict(zip(STATS, row.tolist())) for row in stats]


def _run(cost, threads, stats, reduce):
    if cost.ndim != 3:
        raise ValueError(f"expected a [B, n, m] array, got shape {cost.shape}")
    B, n, m = cost.shape
    if n > m:
        raise ValueError(f"{n} rows cannot take distinct columns among {m}")
    if cost.dtype not in (np.float32, np.float64):
        raise TypeError(f"costs must be float32 or float64, got {cost.dtype}")
    out = np.empty((B, n), np.int64)
    status = np.zeros(B, np.int64)
    record = np.zeros((B, N_STATS if stats else 0))
    if n and B:
        previous = numba.get_num_threads()
        numba.set_num_threads(max(1, min(threads or previous, numba.config.NUMBA_NUM_THREADS, B)))
        try:
            _solve_batch(np.ascontiguousarray(cost), out, status, record, reduce)
        finally:
            numba.set_num_threads(previous)
    bad = np.flatnonzero(status == NOT_FINITE)
    if bad.size:
        raise NonFiniteCost(f"cost matrix {int(bad[0])} of {B} has NaN or infinite entries")
    return out, status, record
