"""Benchmark the exact token-to-pool matcher against scipy, per pool init.

    victor bench matching [--images 16 --masked 547 --pool 2048 --dim 4096 --threads 2 --seed 0] [--explain]

For each setting it builds a batch of Euclidean cost matrices (excluded from
both timings and reported separately), solves every image with
``scipy.optimize.linear_sum_assignment`` and the whole batch with
``victor.model.matching.hungarian_assignment_batched`` (all images in one call,
one image per thread), checks that the total costs agree, and prints one table
row. scipy gets float64 costs, ours the float32 ones the model produces.

Visual tokens are simulated as unit vectors drawn around a few cluster centres
per image (neighbouring patches look alike), ``noise`` being the ratio of the
noise norm to the centre norm. Pool inits:

* ``unit``         -- unit-norm random rows (`pool_init: unit`);
* ``tokens``       -- tokens of other images plus noise, normalised (`pool_init: tokens`, the default);
* ``paper``        -- standard-normal rows (norms ~ sqrt(dim) dominate the cost).

A ``unit`` row with unclustered (uniformly random) tokens is included for reference.

``--explain`` adds a second table: what the exact solver did per image
(`victor.model.lap.STATS`, means over the images): rows its initial phase assigned,
augmentations (Dijkstra searches), rows per augmenting path (mean and max), rows
scanned per search, cost entries relaxed, and how far the row duals rose above each
row's cheapest cost.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from victor.model import lap
from victor.model.matching import euclidean_cost, hungarian_assignment_batched

SETTINGS = (("unit", "clustered"), ("unit", "random"), ("tokens", "clustered"), ("paper", "clustered"))


def clustered_tokens(gen: torch.Generator, images: int, n: int, dim: int, clusters: int, noise: float) -> torch.Tensor:
    """Unit tokens ``[images, n, dim]``: a few random centres per image, plus noise."""
    centres = torch.nn.functional.normalize(torch.randn(images, clusters, dim, generator=gen), dim=-1)
    pick = torch.randint(clusters, (images, n), generator=gen)
    x = torch.gather(centres, 1, pick[..., None].expand(images, n, dim))
    x = x + noise * torch.randn(images, n, dim, generator=gen) / dim**0.5
    return torch.nn.functional.normalize(x, dim=-1)


def make_pool(init: str, gen: torch.Generator, m: int, dim: int, clusters: int, noise: float) -> torch.Tensor:
    if init == "unit":
        return torch.nn.functional.normalize(torch.randn(m, dim, generator=gen), dim=-1)
    if init == "paper":
        return torch.randn(m, dim, generator=gen)
    if init == "tokens":  # tokens of other images, plus noise
        seeds = clustered_tokens(gen, max(1, m // 256), 256, dim, clusters, noise).reshape(-1, dim)[:m]
        return torch.nn.functional.normalize(seeds + 0.5 * torch.randn(m, dim, generator=gen) / dim**0.5, dim=-1)
    raise ValueError(f"unknown pool init {init!r}")


def run_benchmark(
    images: int = 16,
    masked: int = 547,
    pool: int = 2048,
    dim: int = 4096,
    threads: int = 2,
    seed: int = 0,
    clusters: int = 8,
    noise: float = 1.0,
    repeats: int = 2,
    settings: tuple[tuple[str, str], ...] = SETTINGS,
) -> list[dict]:
    """Time scipy (per image) against the batched exact solver; one dict per setting."""
    torch.set_num_threads(threads)
    hungarian_assignment_batched(torch.rand(2, 64, 256))  # warm-up: one-time library initialisation
    rows = []
    for init, tokens in settings:
        gen = torch.Generator().manual_seed(seed)
        if tokens == "clustered":
            x = clustered_tokens(gen, images, masked, dim, clusters, noise)
        else:
            x = torch.nn.functional.normalize(torch.randn(images, masked, dim, generator=gen), dim=-1)
        p = make_pool(init, gen, pool, dim, clusters, noise)

        start = time.perf_counter()
        cost = euclidean_cost(x, p)
        cost_time = time.perf_counter() - start
        dense = cost.double().numpy()

        scipy_time, ours_time = float("inf"), float("inf")
        for _ in range(repeats):  # interleaved, best of `repeats`
            start = time.perf_counter()
            ref = [linear_sum_assignment(dense[b])[1] for b in range(images)]
            scipy_time = min(scipy_time, time.perf_counter() - start)
            start = time.perf_counter()
            ours = hungarian_assignment_batched(cost)
            ours_time = min(ours_time, time.perf_counter() - start)

        idx = np.arange(masked)
        ref_total = np.array([dense[b][idx, ref[b]].sum() for b in range(images)])
        our_total = np.array([dense[b][idx, ours[b].numpy()].sum() for b in range(images)])
        one_to_one = all(len(np.unique(o)) == masked for o in ours.numpy())
        solved = {}  # diagnostics, untimed above: as solved, and without the reduction when it ran
        for reduce in (True, False):
            start = time.perf_counter()
            _, status, stats = lap.solve_with_stats(cost.numpy(), threads=threads, reduce=reduce)
            solved[reduce] = _summary(status, stats, (time.perf_counter() - start) / images)
            if not solved[True]["reduced_images"]:
                break
        equal = bool(np.allclose(our_total, ref_total, rtol=1e-6, atol=0.0)) and one_to_one
        rows.append(
            {
                "init": init,
                "tokens": tokens,
                "masked": masked,
                "pool": pool,
                "cost_s_per_image": cost_time / images,
                "scipy_s_per_image": scipy_time / images,
                "ours_s_per_image": ours_time / images,
                "speedup": scipy_time / ours_time,
                "total_cost_equal": equal,
                "cost_range": (float(cost.min()), float(cost.max())),
                "max_rel_cost_diff": float(np.max(np.abs(our_total - ref_total) / np.abs(ref_total))),
                "nearest_distinct_rows": float(np.mean([len(torch.unique(a)) for a in cost.argmin(-1)])),
                "dense_images": solved[True]["dense_images"],
                "reduced_images": solved[True]["reduced_images"],
                "explain": [solved[k] for k in (True, False) if k in solved],
            }
        )
    return rows


def _summary(status: np.ndarray, stats: list[dict], seconds_per_image: float) -> dict:
    """Means of `lap.STATS` over the images ('path_max': the largest), and how they were solved."""
    out = {k: float(np.mean([d[k] for d in stats])) for k in lap.STATS}
    out["path_max"] = float(max(d["path_max"] for d in stats))
    out["dense_images"] = int((status == lap.DENSE).sum())
    out["reduced_images"] = int((status == lap.REDUCED).sum())
    kinds = {int(s) for s in status}
    names = {lap.OK: "lazy", lap.REDUCED: "reduced", lap.DENSE: "dense"}
    out["solver"] = names[kinds.pop()] if len(kinds) == 1 else "mixed"
    out["s_per_image"] = seconds_per_image
    return out


def format_table(rows: list[dict]) -> str:
    head = (f"{'init':<13}{'tokens':<10}{'scipy s/img':>12}{'ours s/img':>12}{'speedup':>9}{'cost equal':>12}"
            f"{'argmin rows':>13}{'reduced':>9}{'dense':>7}{'cost s/img':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['init']:<13}{r['tokens']:<10}{r['scipy_s_per_image']:>12.4f}{r['ours_s_per_image']:>12.4f}"
            f"{r['speedup']:>8.1f}x{'yes' if r['total_cost_equal'] else 'NO':>12}"
            f"{r['nearest_distinct_rows']:>13.0f}{r['reduced_images']:>9d}{r['dense_images']:>7d}"
            f"{r['cost_s_per_image']:>12.4f}"
        )
    return "\n".join(lines)


def format_explain(rows: list[dict]) -> str:
    """What the exact solver did per image (means over the images; 'path max': the largest).

    A setting the reduction solved gets a second line: the same costs without it, as before."""
    head = (f"{'init':<8}{'tokens':<10}{'solver':<9}{'s/img':>8}{'rows':>6}{'cols':>6}{'initial':>8}"
            f"{'augment':>8}{'path mean':>10}{'path max':>9}{'scans/aug':>10}{'entries':>10}{'u rise':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        for st in r["explain"]:
            reduced = st["solver"] == "reduced"
            aug = max(st["augmentations"], 1.0)
            rows_, cols = (st["kept_cols"], st["kept_cols"]) if reduced else (r["masked"], r["pool"])
            lines.append(
                f"{r['init']:<8}{r['tokens']:<10}{st['solver']:<9}{st['s_per_image']:>8.4f}{rows_:>6.0f}{cols:>6.0f}"
                f"{st['greedy_reduced' if reduced else 'greedy']:>8.0f}{st['augmentations']:>8.0f}"
                f"{st['path_rows'] / aug:>10.2f}{st['path_max']:>9.0f}{st['scans'] / aug:>10.1f}"
                f"{st['entries']:>10.3g}{st['u_rise_mean']:>8.4f}"
            )
    return "\n".join(lines)


EXPLAIN_LEGEND = (
    "'solver': lazy, dense (fallback) or reduced (pruned, squared up with dummy rows, column-reduced; "
    "'rows' x 'cols' is then that problem's size); 's/img': one untimed-above run with counters on; "
    "'initial' = rows the initial phase assigns (its cheapest column still free); 'augment' = "
    "Dijkstra searches; 'path' = rows on an augmenting path; 'scans/aug' = rows reached per search; "
    "'entries' = cost entries relaxed per image; 'u rise' = mean rise of a row's dual above its "
    "cheapest cost, in cost units"
)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--masked", type=int, default=547)
    parser.add_argument("--pool", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--explain", action="store_true", help="also print what the exact solver did per image")
    args = parser.parse_args(argv)
    explain = args.explain
    del args.explain
    rows = run_benchmark(**vars(args))
    print(
        f"{args.images} images x {args.masked} masked tokens x {args.pool} pool rows (dim {args.dim}), "
        f"{args.threads} threads; tokens: {args.clusters} clusters, noise {args.noise}; "
        f"'argmin rows' = distinct pool rows the nearest matcher uses per image; "
        f"'reduced' = images solved after the exact reduction (victor.model.lap._solve_reduced); "
        f"'dense' = images handed to the dense fallback"
    )
    print(format_table(rows))
    if explain:
        print()
        print(EXPLAIN_LEGEND)
        print(format_explain(rows))
    assert all(r["total_cost_equal"] for r in rows), "total costs differ from scipy"
    return rows
