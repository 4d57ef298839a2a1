"""The matching cost decides the assignment under bf16 autocast and TF32 as fp64 costs do.

Inputs: each token has its own two candidate rows, at squared distances 0.25 and 0.25 + 1e-4
(plus far rows), so fp64 and fp32 agree on the nearest row (fp32 rounding in the squared
distance is ~1e-7) while bf16 (~4e-3) and TF32 (~1e-3) rounding of the cross term x.p is far
larger than the 1e-4 gap. TF32 is simulated on the CPU: while the process asks for TF32 matrix
multiplies (as `--tf32 True` does on a GPU), fp32 operands of matmul/mm/linear are rounded to
TF32's 10-bit mantissa, which is what the tensor cores do. The pre-fix cost (a plain fp32
expression, autocast and TF32 left on) fails both checks.
"""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from victor.model.matching import assign, euclidean_cost


def to_tf32(t):
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)  # round to nearest, 10 mantissa bits


class SimulatedTF32(TorchFunctionMode):
    OPS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm, torch.bmm,
           torch.nn.functional.linear}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS and torch.backends.cuda.matmul.fp32_precision == "tf32":
            args = tuple(to_tf32(a) if torch.is_tensor(a) and a.dtype == torch.float32 else a for a in args)
        return func(*args, **kwargs)


def pre_fix_cost(tokens, pool):  # the code before this change
    x, p = tokens.float(), pool.float()
    return ((x * x).sum(-1, keepdim=True) + (p * p).sum(-1) - 2.0 * (x @ p.T)).clamp_min(0).sqrt()


def near_ties(n=96, dim=256, gap=1e-4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)
    def offset(radius):
        d = torch.randn(n, dim, generator=g, dtype=torch.float64)
        return x + radius * torch.nn.functional.normalize(d, dim=-1)
    near, second = offset(0.5), offset((0.25 + gap) ** 0.5)
    far = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1) * 3
    pool = torch.cat([second, near, far])  # the nearest row is not the first, so ties in order cannot help
    return x, pool


@pytest.fixture()
def tf32():
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        with SimulatedTF32():
            yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved


def reference(x, pool, method):
    exact = torch.cdist(x, pool)  # fp64
    return assign(exact.unsqueeze(0), method)[0]


@pytest.mark.parametrize("method", ["nearest", "hungarian"])
def test_assignment_under_bf16_autocast_equals_fp64(method):
    x, pool = near_ties()
    expected = reference(x, pool, method)
    assert torch.equal(expected, torch.arange(len(x)) + len(x))  # each token's own near row
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = assign(euclidean_cost(x.float().unsqueeze(0), pool.float()), method)[0]
        before = assign(pre_fix_cost(x.float(), pool.float()).unsqueeze(0), method)[0]
    assert torch.equal(ours, expected)
    assert not torch.equal(before, expected)  # the test can fail: it did before the fix


@pytest.mark.parametrize("method", ["nearest", "hungarian"])
def test_assignment_under_tf32_equals_fp64(method, tf32):
    x, pool = near_ties()
    expected = reference(x, pool, method)
    ours = assign(euclidean_cost(x.float().unsqueeze(0), pool.float()), method)[0]
    before = assign(pre_fix_cost(x.float(), pool.float()).unsqueeze(0), method)[0]
    assert torch.equal(ours, expected)
    assert not torch.equal(before, expected)
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # restored after the cost


def test_simulated_tf32_rounds_like_tf32(tf32):
    a = torch.tensor([[1.0 + 2 ** -12]])
    assert (a @ torch.ones(1, 1)).item() == 1.0  # below TF32's resolution
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert (a @ torch.ones(1, 1)).item() == 1.0 + 2 ** -12
    torch.backends.cuda.matmul.fp32_precision = "tf32"


def test_cost_is_close_to_fp64_in_bf16_module_dtypes():
    x, pool = near_ties()
    cost = euclidean_cost(x.float(), pool.float())
    assert (cost.double() - torch.cdist(x, pool)).abs().max() < 2e-6
