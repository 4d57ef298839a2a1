"""Tests for victor.model.matching: exactness against scipy, batching, API contract."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from victor.model import lap
from victor.model.matching import (
    MatchingError,
    assign,
    euclidean_cost,
    hungarian_assignment,
    hungarian_assignment_batched,
    nearest_assignment,
)

torch.set_num_threads(1)


def optimum(cost) -> float:
    c = torch.as_tensor(cost).double().numpy()
    return float(c[linear_sum_assignment(c)].sum())


def total(cost, cols) -> float:
    c = torch.as_tensor(cost).double().numpy()
    return float(c[np.arange(c.shape[0]), np.asarray(cols)].sum())


def assert_optimal(cost, cols):
    cols = np.asarray(cols)
    assert len(np.unique(cols)) == len(cols), "assignment is not one-to-one"
    assert total(cost, cols) == pytest.approx(optimum(cost), rel=1e-9, abs=1e-9)


def clustered_tokens(rng, n, dim, centres, noise):
    c = rng.standard_normal((centres, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(centres, size=n)] + noise * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return torch.tensor(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=torch.float32)


def unit_pool(rng, m, dim):
    p = rng.standard_normal((m, dim))
    return torch.tensor(p / np.linalg.norm(p, axis=1, keepdims=True), dtype=torch.float32)


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("n,m", [(1, 1), (1, 7), (5, 5), (12, 12), (9, 40), (30, 64), (64, 200)])
def test_random_costs_match_scipy(n, m):
    rng = np.random.default_rng(n * 1000 + m)
    for _ in range(5):
        cost = torch.tensor(rng.random((n, m)), dtype=torch.float32)
        assert_optimal(cost, hungarian_assignment(cost))


def test_integer_costs_with_ties_match_scipy():
    rng = np.random.default_rng(1)
    for trial in range(40):
        n = int(rng.integers(1, 25))
        m = int(rng.integers(n, 50))
        cost = torch.tensor(rng.integers(0, 3, (n, m)), dtype=torch.float64)
        assert_optimal(cost, hungarian_assignment(cost))
    # every token prefers the same pool rows, in the same order
    cost = torch.arange(20, dtype=torch.float64).repeat(9, 1)
    assert_optimal(cost, hungarian_assignment(cost))


def test_clustered_tokens_match_scipy():
    rng = np.random.default_rng(2)
    pool = unit_pool(rng, 1024, 64)
    for centres, noise in [(1, 0.2), (3, 0.5), (6, 1.0), (1, 1e3)]:
        cost = euclidean_cost(clustered_tokens(rng, 150, 64, centres, noise), pool)
        assert_optimal(cost, hungarian_assignment(cost))


def test_token_seeded_pool_matches_scipy():
    rng = np.random.default_rng(13)
    tokens = clustered_tokens(rng, 400, 64, 5, 0.8)
    seeds = tokens[torch.as_tensor(rng.integers(400, size=768))]
    pool = torch.nn.functional.normalize(seeds + 0.5 * torch.randn(768, 64) / 8, dim=-1)
    cost = euclidean_cost(tokens[:150], pool)
    assert_optimal(cost, hungarian_assignment(cost))


def test_paper_init_where_row_norms_dominate():
    """std-1 pool rows: (nearly) every token wants the same pool row; the reduction (and, without
    it, the dense path) is exact."""
    rng = np.random.default_rng(3)
    tokens = clustered_tokens(rng, 80, 256, 4, 1.0)
    pool = torch.tensor(rng.standard_normal((768, 256)), dtype=torch.float32)
    cost = euclidean_cost(tokens, pool)
    assert len(torch.unique(cost.argmin(-1))) <= 3  # nearly every token wants the same row
    assert_optimal(cost, hungarian_assignment(cost))
    _, status = lap.solve_with_status(cost[None].numpy())
    assert status.tolist() == [lap.REDUCED]
    out, status, (st,) = lap.solve_with_stats(cost[None].numpy(), reduce=False)
    assert status.tolist() == [lap.DENSE] and st["greedy"] <= 3
    assert_optimal(cost, out[0])


def test_dense_path_alone_matches_scipy():
    rng = np.random.default_rng(17)
    for n, m in [(1, 1), (7, 7), (20, 45), (60, 64)]:
        for dtype in (np.float32, np.float64):
            cost = rng.random((n, m)).astype(dtype)
            cols = np.empty(n, np.int64)
            lap._solve_dense(cost, cols)
            assert_optimal(torch.from_numpy(cost), cols)


def test_lazy_solver_is_exact_without_dense_fallback():
    """Clustered tokens compete for the same rows: rows must read beyond their first block."""
    rng = np.random.default_rng(15)
    pool = unit_pool(rng, 2048, 64)
    costs = torch.stack([euclidean_cost(clustered_tokens(rng, 547, 64, 8, 1.0), pool) for _ in range(2)])
    out, status = lap.solve_with_status(costs.numpy())
    assert status.tolist() == [lap.OK, lap.OK]
    for b in range(2):
        assert_optimal(costs[b], out[b])
        # the optimum is not "every token takes its own cheapest row": competition was resolved
        assert len(torch.unique(costs[b].argmin(-1))) < 547


def test_rows_whose_cheapest_entries_share_one_block():
    """Every token's cheapest entries lie in block 0 and tie with each other: levels must rise."""
    n, m = 12, 70  # m not a multiple of the block size
    cost = torch.full((n, m), 5.0, dtype=torch.float64)
    cost[:, : lap.BLOCK // 2] = 1.0
    cost[:, -3:] = 0.5  # cheapest entries in the last, partial block
    cost += torch.linspace(0, 1e-3, n)[:, None] * torch.arange(m)[None] / m
    assert_optimal(cost, hungarian_assignment(cost))


def test_square_and_degenerate_shapes():
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    assert_optimal(cost, hungarian_assignment(cost))
    empty = hungarian_assignment(torch.zeros(0, 5))
    assert empty.shape == (0,) and empty.dtype == torch.long
    assert hungarian_assignment_batched(torch.zeros(0, 3, 5)).shape == (0, 3)
    assert hungarian_assignment_batched(torch.zeros(2, 0, 5)).shape == (2, 0)


def test_block_layout_with_odd_pool_size():
    """m not a multiple of the block size: the last block is partial."""
    rng = np.random.default_rng(4)
    for m in (97, 130, 250):
        cost = euclidean_cost(clustered_tokens(rng, 40, 32, 3, 0.6), unit_pool(rng, m, 32))
        assert_optimal(cost, hungarian_assignment(cost))


# ------------------------------------------------------------------- batching


def test_batched_tensor_equals_per_instance():
    rng = np.random.default_rng(5)
    pool = unit_pool(rng, 640, 48)
    costs = torch.stack([euclidean_cost(clustered_tokens(rng, 120, 48, 4, 0.8), pool) for _ in range(4)])
    out = hungarian_assignment_batched(costs)
    assert out.shape == (4, 120) and out.dtype == torch.long
    for b in range(4):
        assert total(costs[b], out[b]) == pytest.approx(total(costs[b], hungarian_assignment(costs[b])), rel=1e-9)
        assert_optimal(costs[b], out[b])


def test_batched_list_with_different_sizes():
    rng = np.random.default_rng(6)
    costs = [torch.tensor(rng.random((n, m)), dtype=torch.float32) for n, m in [(3, 10), (20, 20), (0, 4), (17, 64)]]
    out = hungarian_assignment_batched(costs)
    assert isinstance(out, list) and [len(o) for o in out] == [3, 20, 0, 17]
    for c, o in zip(costs, out):
        assert_optimal(c, o)


def test_assign_dispatch():
    rng = np.random.default_rng(7)
    cost = torch.tensor(rng.random((2, 6, 9)), dtype=torch.float32)
    assert torch.equal(assign(cost, "nearest"), cost.argmin(-1))
    assert_optimal(cost[0], assign(cost[0], "hungarian"))
    batched = assign(cost, "hungarian")
    assert batched.shape == (2, 6)
    assert isinstance(assign(list(cost), "hungarian"), list)
    with pytest.raises(ValueError, match="hungarian, nearest"):
        assign(cost, "greedy")


# --------------------------------------------------------------- API contract


def test_nearest_equals_argmin():
    rng = np.random.default_rng(8)
    cost = torch.tensor(rng.random((3, 11, 29)), dtype=torch.float32)
    assert torch.equal(nearest_assignment(cost), cost.argmin(-1))
    assert nearest_assignment(cost).dtype == torch.long


def test_too_many_tokens_raises_clear_error():
    with pytest.raises(MatchingError, match=r"pool has 100 rows but 547 tokens are masked"):
        hungarian_assignment(torch.rand(547, 100))
    with pytest.raises(ValueError, match="pool_size|mask_ratio"):
        hungarian_assignment_batched([torch.rand(3, 5), torch.rand(6, 5)])


def test_nan_costs_are_rejected():
    cost = torch.rand(4, 8)
    cost[1, 2] = float("nan")
    with pytest.raises(ValueError, match="must be finite"):
        hungarian_assignment(cost)
    cost[1, 2] = float("inf")
    with pytest.raises(ValueError, match="must be finite"):
        hungarian_assignment_batched(cost[None])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_device_dtype_and_no_graph(dtype):
    rng = np.random.default_rng(9)
    tokens = clustered_tokens(rng, 24, 16, 2, 0.7).to(dtype).requires_grad_(True)
    pool = unit_pool(rng, 64, 16).to(dtype).requires_grad_(True)
    cost = euclidean_cost(tokens, pool)
    assert cost.dtype == torch.float32 and cost.device == tokens.device
    assert not cost.requires_grad and cost.grad_fn is None
    graded = torch.cdist(tokens.float(), pool.float()).to(dtype)  # a cost that carries a graph
    for out in (hungarian_assignment(graded), nearest_assignment(graded), hungarian_assignment_batched(graded[None])[0]):
        assert out.dtype == torch.long and out.device == graded.device
        assert not out.requires_grad and out.grad_fn is None
    assert_optimal(graded.detach().double(), hungarian_assignment(graded))


def test_euclidean_cost_matches_cdist_with_leading_dims():
    rng = np.random.default_rng(10)
    tokens = torch.tensor(rng.standard_normal((2, 3, 5, 12)), dtype=torch.float32)
    pool = torch.tensor(rng.standard_normal((7, 12)), dtype=torch.float32)
    cost = euclidean_cost(tokens, pool)
    assert cost.shape == (2, 3, 5, 7)
    torch.testing.assert_close(cost, torch.cdist(tokens, pool.expand(2, 3, 7, 12)), atol=1e-4, rtol=1e-4)
    same = euclidean_cost(pool, pool)  # zero distances stay finite and non-negative
    assert torch.isfinite(same).all() and (same >= 0).all() and same.diagonal().max() < 1e-2


# ------------------------------------------------------------------- threads


def test_parallel_threads_give_the_same_answer_and_settings_are_restored():
    import numba

    rng = np.random.default_rng(16)
    pool = unit_pool(rng, 256, 32)
    costs = torch.stack([euclidean_cost(clustered_tokens(rng, 60, 32, 3, 0.7), pool) for _ in range(6)])
    before = numba.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = hungarian_assignment_batched(costs)
        assert torch.get_num_threads() == 2 and numba.get_num_threads() == before
    finally:
        torch.set_num_threads(1)
    one = hungarian_assignment_batched(costs)
    assert torch.equal(one, two)


def test_distinct_argmins_are_the_answer():
    cost = torch.rand(2, 50, 300) + 5.0
    idx = torch.arange(50)
    cost[:, idx, 3 * idx] = 0.0  # token i's cheapest row is 3i, all distinct
    out = hungarian_assignment_batched(cost)
    assert torch.equal(out, (3 * idx).expand(2, 50))


def test_matching_benchmark_runs_small_and_agrees_with_scipy():
    from victor.bench.matching import format_explain, format_table, run_benchmark

    rows = run_benchmark(images=2, masked=24, pool=64, dim=16, threads=1, seed=0, clusters=4, noise=1.0, repeats=1)
    assert {r["init"] for r in rows} == {"unit", "tokens", "paper"}
    assert all(r["total_cost_equal"] for r in rows)
    assert "speedup" in format_table(rows)
    explain = format_explain(rows).splitlines()
    assert "path mean" in explain[0] and len(explain) == 2 + sum(len(r["explain"]) for r in rows)
    for r in rows:
        st = r["explain"][0]  # as solved; then, if the reduction ran, without it
        assert len(r["explain"]) == 1 + (r["reduced_images"] > 0)
        if st["solver"] == "lazy":  # one search per row the initial phase left free
            assert st["augmentations"] == 24 - st["greedy"]


def test_shape_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"hungarian_assignment expects a \[n, m\] cost, got shape \(2, 3, 4\)"):
        hungarian_assignment(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"expected a \[B, n, m\] tensor or a list of \[n, m\] tensors, got \(3, 4\)"):
        hungarian_assignment_batched(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"each cost must be \[n, m\], got shape \(4,\)"):
        hungarian_assignment_batched([torch.zeros(2, 4), torch.zeros(4)])
    with pytest.raises(ValueError, match="unknown matching method 'greedy'; valid choices: hungarian, nearest"):
        assign(torch.zeros(2, 4), "greedy")


def test_nearest_on_a_list_of_costs_is_the_argmin_of_each():
    torch.manual_seed(0)
    costs = [torch.rand(3, 5), torch.rand(4, 5)]
    rows = assign(costs, "nearest")
    assert isinstance(rows, list) and [r.tolist() for r in rows] == [c.argmin(-1).tolist() for c in costs]


# ------------------------------------------------------------------ diagnostics


def test_stats_of_a_hand_solved_instance():
    """Row 0 takes column 0 at once; row 1 wants it too, and the cheapest way is to move row 0
    to column 1 (total 1 + 0 < 0 + 2): one augmentation along a path of two rows, both row
    duals rise by 1 and column 0's price falls to -1."""
    cost = np.array([[[0.0, 1.0, 5.0, 5.0], [0.0, 2.0, 5.0, 5.0]]])
    out, status, (st,) = lap.solve_with_stats(cost, threads=1)
    assert out.tolist() == [[1, 0]] and status.tolist() == [lap.OK]
    assert st["greedy"] == 1 and st["augmentations"] == 1
    assert st["path_rows"] == 2 and st["path_max"] == 2
    assert st["scans"] == 2 and st["settled"] == 2  # root, then row 0 via column 0; column 1 is the sink
    assert st["u_rise_mean"] == 1.0 and st["u_rise_max"] == 1.0
    assert st["v_cols"] == 1 and st["v_depth_max"] == 1.0 and st["dense"] == 0


def test_stats_count_one_search_per_row_the_initial_phase_left_free():
    rng = np.random.default_rng(21)
    pool = unit_pool(rng, 512, 32)
    costs = torch.stack([euclidean_cost(clustered_tokens(rng, 150, 32, 4, 1.0), pool) for _ in range(3)])
    plain = lap.solve(costs.numpy(), threads=1)
    out, status, stats = lap.solve_with_stats(costs.numpy(), threads=1)
    assert np.array_equal(out, plain)  # recording changes nothing
    for b, st in enumerate(stats):
        assert status[b] == lap.OK and st["dense"] == 0
        assert 0 < st["greedy"] < 150 and st["augmentations"] == 150 - st["greedy"]
        assert st["augmentations"] <= st["path_rows"] <= st["path_max"] * st["augmentations"]
        assert st["scans"] == st["settled"]  # every settled column but the sink leads to a scan, plus the root
        assert_optimal(costs[b], out[b])


def test_stats_of_the_dense_fallback():
    """Every row prefers the same columns in the same order: only one row starts assigned, the
    dense solver runs one search per row."""
    cost = np.tile(np.arange(20.0), (9, 1))[None]
    out, status, (st,) = lap.solve_with_stats(cost, threads=1)
    assert status.tolist() == [lap.DENSE] and st["dense"] == 1
    assert st["greedy"] == 1 and st["augmentations"] == 9
    assert sorted(out[0].tolist()) == list(range(9))


# ------------------------------------------------------------------ the reduction for shared preferences


def test_reduction_keeps_the_columns_no_n_others_dominate():
    """Column j costs j plus row noise below 0.1: every row prefers column 0, then 1, ... Columns
    8.. are dominated by columns 0..7 (cost >= 8 > 7.1), so 8 rows keep 8 columns, no dummies."""
    rng = np.random.default_rng(5)
    cost = np.arange(20.0)[None] + 0.1 * rng.random((8, 20))
    out, status, (st,) = lap.solve_with_stats(cost[None], threads=1)
    assert status.tolist() == [lap.REDUCED] and st["reduced"] == 1 and st["dense"] == 0
    assert st["greedy"] == 1  # on the raw costs: only one row gets column 0
    assert st["kept_cols"] == 8 and st["dummy_rows"] == 0
    assert sorted(out[0].tolist()) == list(range(8))
    assert_optimal(torch.from_numpy(cost), out[0])


@pytest.mark.parametrize("seed", range(4))
def test_reduction_matches_scipy_on_column_dominated_costs(seed):
    """A per-column term dominates: rectangular (dummy rows), square, with integer ties, and
    std-normal pool rows; each solved after the reduction and optimal."""
    rng = np.random.default_rng(100 + seed)
    cases = []
    for _ in range(6):
        n = int(rng.integers(8, 90))
        m = int(rng.integers(n, 2 * n + 10))
        cases.append(rng.random(m)[None] * 10 + rng.random((n, m)) * rng.choice([0.05, 0.5, 2.0]))
        cases.append(rng.random(n)[None] * 5 + rng.random((n, n)) * 0.1)
        cases.append((rng.integers(0, 5, m)[None] * 3 + rng.integers(0, 3, (n, m))).astype(np.float64))
        x = torch.nn.functional.normalize(torch.tensor(rng.standard_normal((n, 32)), dtype=torch.float32), dim=-1)
        cases.append(euclidean_cost(x, torch.tensor(rng.standard_normal((m, 32)), dtype=torch.float32)).numpy())
    reduced = 0
    for cost in cases:
        out, status, (st,) = lap.solve_with_stats(cost[None], threads=1)
        reduced += int(status[0] == lap.REDUCED)
        if status[0] == lap.REDUCED:
            assert st["kept_cols"] >= cost.shape[0] and st["dummy_rows"] == st["kept_cols"] - cost.shape[0]
        assert_optimal(torch.from_numpy(cost), out[0])
    assert reduced >= len(cases) // 2
