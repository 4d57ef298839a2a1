"""The language-model loss without full-vocabulary logits for the batch.

The plain loss (`lm_head(hidden)` then cross-entropy) holds fp32 logits for every token of the
micro-batch: 152 k vocabulary x 2 k tokens x batch 16 is ~19 GB, plus the same again for their
gradient. `chunked_lm_loss` computes the same number (transformers' ForCausalLMLoss: labels
shifted by one, -100 ignored, a sum over answer tokens divided by `num_items_in_batch`, or their
mean) chunk by chunk over tokens, so at most one chunk of logits exists at a time:

* a plain (or DeepSpeed ZeRO-1/2) `lm_head`: one autograd Function that, per chunk, computes the
  logits, the loss and the gradients for the hidden states and the head (as Liger's fused
  linear + cross-entropy does), in the autocast dtype where autocast is on; three matrix
  multiplies per chunk, the same work as the plain loss;
* a ZeRO-3-partitioned `lm_head` (its weight lives in shards gathered by module hooks): each
  chunk runs the module under non-reentrant activation checkpointing (the logits are
  recomputed in backward, one chunk at a time);
* on a GPU with `liger_kernel` installed and a plain head: Liger's fused kernel.
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE = -100
LOGITS_BUDGET = 1 << 26  # fp32 logits per chunk (256 MiB): 441 tokens at 152 k vocabulary, 2048 at 32 k


def default_chunk(vocab: int) -> int:
    return max(64, LOGITS_BUDGET // max(1, vocab))


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets [batch * seq], as ForCausalLMLoss builds them (last position ignored)."""
    return F.pad(labels, (0, 1), value=IGNORE)[:, 1:].reshape(-1)


def chunked_lm_loss(hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor, num_items_in_batch=None,
                    chunk: int | None = None, use_liger: bool = True) -> torch.Tensor:
    """ForCausalLMLoss(lm_head(hidden), labels, num_items_in_batch) without holding the logits."""
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    vocab = weight.ds_shape[0] if hasattr(weight, "ds_shape") else weight.shape[0]
    chunk = chunk or default_chunk(vocab)
    flat = hidden.reshape(-1, hidden.shape[-1])
    targets = shifted_targets(labels).to(flat.device)
    if hasattr(weight, "ds_id"):  # ZeRO-3: the module's hooks gather the shards, call the module
        total = _checkpointed(flat, lm_head, targets, chunk)
    elif use_liger and flat.is_cuda and importlib.util.find_spec("liger_kernel") is not None:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        total = liger_fused_linear_cross_entropy(flat, weight, targets, bias, ignore_index=IGNORE, reduction="sum")
    else:
        device = flat.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else flat.dtype
        total = _ChunkedLinearCrossEntropy.apply(flat, weight, bias, targets, chunk, dtype)
    if num_items_in_batch is None:
        return total / (targets != IGNORE).sum()  # 0/0 = nan without answer tokens, as the mean gives
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _checkpointed(flat, lm_head, targets, chunk):
    def piece(h, t):
        return F.cross_entropy(lm_head(h).float(), t, ignore_index=IGNORE, reduction="sum")

    return sum(checkpoint(piece, flat[s:s + chunk], targets[s:s + chunk], use_reentrant=False)
               for s in range(0, flat.shape[0], chunk))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum over valid targets of cross_entropy(h @ W.T + b): loss and gradients per chunk, in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, dtype):
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        acc = torch.promote_types(dtype, torch.float32)  # logits, loss and head gradients: fp32 (fp64 for fp64)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            total = torch.zeros((), dtype=acc, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
            for s in range(0, hidden.shape[0], chunk):
                h, t = hidden[s:s + chunk].to(dtype), targets[s:s + chunk]
                logits = F.linear(h, w, b).to(acc)
                valid = t != IGNORE
                safe = t.clamp(min=0).unsqueeze(1)
                lse = torch.logsumexp(logits, dim=-1)
                total += torch.where(valid, lse - logits.gather(1, safe).squeeze(1), 0.0).sum()
                if not (need_h or need_w or need_b):
                    continue
                g = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
                g.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=g.dtype))
                g.mul_(valid.unsqueeze(1))
                if need_b:
                    grad_b += g.sum(0)
                g = g.to(dtype)
                if need_h:
                    grad_h[s:s + chunk] = (g @ w).to(hidden.dtype)
                if need_w:
                    if dtype == acc:
                        grad_w.addmm_(g.T, h)
                    else:
                        grad_w.add_((g.T @ h).to(acc))
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        dh, dw, db = ctx.dtypes
        scale = lambda g, dt: None if g is None else (g * grad_out).to(dt)  # noqa: E731
        return scale(grad_h, dh), scale(grad_w, dw), scale(grad_b, db), None, None, None
