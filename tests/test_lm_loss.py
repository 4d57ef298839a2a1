"""The chunked language-model loss equals transformers' plain loss, value and gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.loss.loss_utils import ForCausalLMLoss

from victor.model.lm_loss import chunked_lm_loss


def setup(bias=False, seed=0, vocab=97, hidden=24, batch=3, seq=11):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(hidden, vocab, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g) * 0.3)
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=g))
    h = torch.randn(batch, seq, hidden, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[:, :4] = -100  # prompts
    labels[1, 8:] = -100  # padding
    return head, h, labels


def grads(loss, head, h):
    params = [h, head.weight] + ([head.bias] if head.bias is not None else [])
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("num_items", [None, 37])
def test_chunked_loss_equals_plain_loss_and_gradients(chunk, bias, num_items):
    head, h, labels = setup(bias)
    plain = ForCausalLMLoss(head(h), labels, vocab_size=97, num_items_in_batch=num_items)
    ours = chunked_lm_loss(h, head, labels, num_items, chunk=chunk)
    assert ours.item() == pytest.approx(plain.item(), rel=1e-6)
    for a, b in zip(grads(ours * 1.7, head, h), grads(plain * 1.7, head, h)):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_chunked_loss_in_fp64_is_exact_to_rounding():
    head, h, labels = setup()
    head.double()
    h = h.detach().double().requires_grad_()
    plain = F.cross_entropy(head(h)[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100)
    ours = chunked_lm_loss(h, head, labels, chunk=7)
    assert abs(ours.item() - plain.item()) < 1e-12
    for a, b in zip(grads(ours, head, h), grads(plain, head, h)):
        assert (a - b).abs().max() < 1e-12


def test_chunked_loss_under_bf16_autocast_is_close_to_plain():
    head, h, labels = setup()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = ForCausalLMLoss(head(h), labels, vocab_size=97)
        ours = chunked_lm_loss(h, head, labels, chunk=8)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(plain.item(), rel=1e-2)
    for a, b in zip(grads(ours, head, h), grads(plain, head, h)):
        assert a.dtype == b.dtype and torch.allclose(a, b, atol=2e-2, rtol=5e-2)


def test_no_answer_tokens_gives_nan_like_the_mean():
    head, h, labels = setup()
    labels[:] = -100
    assert torch.isnan(chunked_lm_loss(h, head, labels, chunk=4))


def test_frozen_head_gets_no_gradient_work():
    head, h, labels = setup()
    head.weight.requires_grad_(False)
    loss = chunked_lm_loss(h, head, labels, chunk=4)
    (gh,) = torch.autograd.grad(loss, [h])
    (ref,) = torch.autograd.grad(ForCausalLMLoss(head(h), labels, vocab_size=97), [h])
    assert torch.allclose(gh, ref, atol=1e-6)
