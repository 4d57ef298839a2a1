"""Stage 1.5: visual comprehension via token reconstruction (ViCToR, formerly Croc).

Per image, as in the paper:

1. encode and project the image; keep a detached copy as the reconstruction target;
2. mask a fixed share of its visual tokens, uniformly at random;
3. match every masked token to a row of the learnable visual token pool (Hungarian:
   one-to-one, minimum total Euclidean cost; or nearest row);
4. replace the masked tokens with their pool rows and run the LLM, with causal,
   bidirectional-visual or prefix attention;
5. loss = LM cross-entropy on the caption + weight * SmoothL1(head(hidden at visual
   positions), target).

This module takes tensors and returns tensors. It knows nothing of files or Trainer. Image
positions come from `input_ids == image_token_id`; everything is a batched tensor op.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertLayer
from transformers.masking_utils import create_causal_mask

from victor.config import ComprehensionConfig
from victor.model import comprehension_state, matching
from victor.model.lm_loss import chunked_lm_loss


# The authors' heads are initialised by their LLM's `post_init`: Linear and Embedding weights
# N(0, initializer_range) (0.02 in Vicuna-7B v1.5 and Qwen2.5-7B-Instruct), biases 0, LayerNorm 1 / 0.
HEAD_INIT_STD = 0.02


def croc_block_config(hidden: int, dropout: float = 0.1) -> BertConfig:
    """The Croc head's block (croc_llama.py:50): BertConfig defaults (post-LN, GELU, eps 1e-12, dropout
    0.1) with width `hidden`, a 4x feed-forward and heads of 64 dims (64 heads at 4096). Widths that 64
    does not divide (tiny test models) get the largest head count <= hidden // 64 that divides them."""
    heads = max(1, hidden // 64)
    while hidden % heads:
        heads -= 1
    return BertConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=heads,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def _init_like_authors(module: nn.Module, std: float = HEAD_INIT_STD) -> None:
    """Linear weights N(0, std), biases 0; LayerNorm weight 1, bias 0 (their `_init_weights`)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ReconstructionHead(nn.Module):
    """`linear` (ViCToR: one nn.Linear) or `transformer` (Croc): learned positions + one transformers
    `BertLayer` built from `croc_block_config` + linear. Every weight N(0, 0.02) as in both authors' code."""

    def __init__(self, kind: str, hidden: int, out: int, n_visual: int, dropout: float = 0.1):
        super().__init__()
        self.kind = kind
        if kind == "transformer":
            # the authors' nn.Embedding(576, hidden) looked up at 0..n-1: one learned row per position
            self.positions = nn.Parameter(torch.empty(n_visual, hidden))
            nn.init.normal_(self.positions, std=HEAD_INIT_STD)
            self.layer = BertLayer(croc_block_config(hidden, dropout))
        self.proj = nn.Linear(hidden, out)
        _init_like_authors(self)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [images, n_visual, hidden]
        if self.kind == "transformer":
            hidden = self.layer(hidden + self.positions)  # no mask: each image's tokens see each other
        return self.proj(hidden)


def random_token_mask(n_images: int, n_visual: int, n_masked: int, device, generator=None) -> torch.Tensor:
    """Exactly `n_masked` of each image's `n_visual` positions, uniformly at random. -> bool [images, n_visual]."""
    return _mask_from_positions(random_positions(n_images, n_visual, n_masked, device, generator), n_visual)


def keyed_token_mask(keys: torch.Tensor, n_visual: int, n_masked: int, seed: int, step: int, device) -> torch.Tensor:
    """Like `random_token_mask`, but each image's mask is a function of (seed, step, its key) alone.

    With keys naming the sample (dataset index and image ordinal), a sample gets the same mask
    whichever process or micro-batch it lands in: one process with batch 8 and two with batch 4
    train on identical masks. The scores are a counter-based hash (splitmix64) computed on the
    keys' device, so no key is ever read by the host."""
    return _mask_from_positions(keyed_positions(keys, n_visual, n_masked, seed, step, device), n_visual)


def _as_int64(value: int) -> int:
    value %= 2**64
    return value - 2**64 if value >= 2**63 else value


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping arithmetic, the same on every device)."""
    x = x + _as_int64(0x9E3779B97F4A7C15)
    x = (x ^ _srl(x, 30)) * _as_int64(0xBF58476D1CE4E5B9)
    x = (x ^ _srl(x, 27)) * _as_int64(0x94D049BB133111EB)
    return x ^ _srl(x, 31)


def keyed_positions(keys: torch.Tensor, n_visual: int, n_masked: int, seed: int, step: int, device) -> torch.Tensor:
    """The masked positions of `keyed_token_mask`, ascending: Long [images, n_masked]."""
    mixed = _as_int64(seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9)  # host integers only
    per_image = _splitmix64(_splitmix64(keys.to(device=device, dtype=torch.long) ^ mixed) + mixed)
    scores = _splitmix64(per_image[:, None] + torch.arange(n_visual, device=device) * _as_int64(0xD1B54A32D192ED03))
    return _positions_from_scores(scores, n_masked)


def random_positions(n_images: int, n_visual: int, n_masked: int, device, generator=None) -> torch.Tensor:
    """The masked positions of `random_token_mask`, ascending: Long [images, n_masked]."""
    return _positions_from_scores(torch.rand(n_images, n_visual, device=device, generator=generator), n_masked)


def _positions_from_scores(scores: torch.Tensor, n_masked: int) -> torch.Tensor:
    return scores.argsort(dim=1)[:, :n_masked].sort(dim=1).values


def _mask_from_positions(positions: torch.Tensor, n_visual: int) -> torch.Tensor:
    mask = torch.zeros(positions.shape[0], n_visual, dtype=torch.bool, device=positions.device)
    return mask.scatter_(1, positions, True)


def image_positions(is_image: torch.Tensor, n_total: int) -> torch.Tensor:
    """Flat indices of the `n_total` True entries of `is_image` [batch, seq], in row-major order,
    without a host sync (a stable sort, not `nonzero`: the output size is known in advance)."""
    flat = is_image.reshape(-1)
    torch._assert_async(flat.sum() == n_total, "image tokens in input_ids do not match the images' visual tokens")
    return torch.sort((~flat).to(torch.uint8), stable=True).indices[:n_total]


def block_ids(input_ids, attention_mask, labels, image_token_id: int, n_visual: int, mode: str):
    """Per-token block ids for transformers' blockwise overlay: equal ids >= 0 see each other."""
    if mode == "causal":
        return None
    if mode == "bidirectional-visual":
        is_image = input_ids == image_token_id
        ordinal = (is_image.cumsum(dim=1) - 1) // n_visual  # which image of the sample
        return torch.where(is_image, ordinal, -1)
    # prefix: everything before the first supervised token is one bidirectional block (no labels: all of it)
    supervised = labels != -100 if labels is not None else torch.zeros_like(input_ids, dtype=torch.bool)
    first = torch.where(supervised.any(dim=1), supervised.int().argmax(dim=1), supervised.shape[1])
    in_prefix = torch.arange(supervised.shape[1], device=supervised.device)[None, :] < first[:, None]
    return torch.where(in_prefix & attention_mask.bool(), 0, -1)


# attention kernels that take the blockwise 4-D mask (or BlockMask) `create_causal_mask` builds for the
# bidirectional-visual and prefix modes; flash-attention kernels take padding only and would run causal
MASK_KERNELS = ("eager", "sdpa", "flex_attention")


def check_attention_kernel(mode: str, kernel: str | None) -> None:
    """Refuse an attention mode the kernel cannot express (it would silently train causal)."""
    if mode != "causal" and (kernel or "sdpa") not in MASK_KERNELS:
        raise ValueError(f"attention={mode!r} needs a mask that attn_implementation={kernel!r} cannot apply (it "
                         f"would silently run causal attention); use attn_implementation {', '.join(MASK_KERNELS)} "
                         f"(flex_attention is the fused choice on GPUs), or attention='causal'")


# transformers renamed create_causal_mask's `past_key_values` to `cache` (5.2x); accept both.
_CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def build_attention_mask(text_config, inputs_embeds, attention_mask, position_ids, blocks):
    """4-D mask in the format of the active attention implementation (eager/sdpa/flex)."""
    if blocks is None:
        return attention_mask
    return create_causal_mask(
        config=text_config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        block_sequence_ids=blocks,
        **{_CACHE_ARG: None},
    )


class VisualComprehension(nn.Module):
    """Pool + reconstruction head + the stage-1.5 forward around a LLaVA model."""

    def __init__(self, llava, config: ComprehensionConfig, mask_seed: int = 0):
        super().__init__()
        self.settings = config
        self.mask_seed = mask_seed
        self.llava = llava
        lcfg = llava.config
        self.n_visual = lcfg.image_seq_length
        config.validate(self.n_visual)
        check_attention_kernel(config.attention, getattr(lcfg.text_config, "_attn_implementation", None))
        hidden = lcfg.text_config.hidden_size
        self.pool = nn.Parameter(torch.empty(config.pool_size, hidden))
        self.register_buffer("pool_ready", torch.tensor(config.pool_init != "tokens"))
        self.register_buffer("usage", torch.zeros(config.pool_size, dtype=torch.long))
        self._init_pool()
        target_dim = hidden if config.recon_target == "projector" else lcfg.vision_config.hidden_size
        self.head = ReconstructionHead(
            config.recon_head, hidden, target_dim, self.n_visual, config.recon_head_dropout
        )
        # the pool and head live in the LLM's dtype (bf16 under DeepSpeed), so an engine that flattens
        # parameters into one buffer (ZeRO-3) sees one dtype; their values were drawn in fp32 above
        dtype = llava.get_input_embeddings().weight.dtype
        self.pool.data = self.pool.data.to(dtype)
        self.head.to(dtype)

    # -- pool ---------------------------------------------------------------------------------
    def _init_pool(self):
        with torch.no_grad():
            nn.init.normal_(self.pool, std=1.0)  # `paper`: row norm ~ sqrt(hidden)
            if self.settings.pool_init == "unit":
                self.pool.copy_(F.normalize(self.pool, dim=-1))

    def seed_pool(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """`tokens` init: rows are real projected visual tokens (+1% noise), on the tokens' scale, so
        that matching depends on the image. Call once, before training (never inside forward)."""
        with torch.no_grad():
            flat = tokens.reshape(-1, tokens.shape[-1]).float().cpu()
            n = self.pool.shape[0]
            if flat.shape[0] >= n:
                pick = torch.randperm(flat.shape[0], generator=generator)[:n]
            else:
                pick = torch.randint(0, flat.shape[0], (n,), generator=generator)
            rows = flat[pick]
            noise = torch.randn(rows.shape, generator=generator)
            rows = rows + 0.01 * rows.norm(dim=-1, keepdim=True).mean() * noise / math.sqrt(rows.shape[-1])
            self.pool.copy_(rows.to(device=self.pool.device, dtype=self.pool.dtype))
            self.pool_ready.fill_(True)

    def project_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens [images, n_visual, hidden] (what stage 1.5 masks and matches)."""
        with torch.no_grad():
            pixel_values = pixel_values.to(next(self.llava.parameters()).dtype)
            return torch.stack(list(self.llava.model.get_image_features(pixel_values=pixel_values).pooler_output))

    def load_pool(self, state: dict[str, torch.Tensor]) -> bool:
        """Continue from saved rows (`pool_init: checkpoint`): the pool of a finished stage 1.5 or of a
        converted release; the head too where its tensors fit this head. Returns whether it did."""
        with torch.no_grad():
            if tuple(state["pool"].shape) != tuple(self.pool.shape):
                raise ValueError(f"the saved pool has shape {tuple(state['pool'].shape)}, this stage's "
                                 f"{tuple(self.pool.shape)} (pool_size x LLM hidden size)")
            self.pool.copy_(state["pool"])
            self.pool_ready.fill_(True)
            head = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
            own = self.head.state_dict()
            if head.keys() != own.keys() or any(head[k].shape != own[k].shape for k in own):
                return False
            self.head.load_state_dict(head)
            return True

    # -- the method ---------------------------------------------------------------------------
    def mask_and_match(self, tokens: torch.Tensor, image_keys: torch.Tensor | None = None, step: int = 0):
        """tokens [images, n_visual, hidden] -> (replaced tokens, mask, matched rows, costs).

        With `image_keys` (one per image, from the collator) masks depend on (seed, step, key) only;
        without, they come from torch's global generator. Masked positions are gathered and
        scattered by index (their count is fixed), so nothing here waits for the device except the
        one copy of the costs to the Hungarian solver."""
        n_images, n_visual, hidden = tokens.shape
        n_masked = self.settings.masked_count(n_visual)
        if image_keys is None:
            positions = random_positions(n_images, n_visual, n_masked, tokens.device)
        else:
            positions = keyed_positions(image_keys, n_visual, n_masked, self.mask_seed, step, tokens.device)
        mask = _mask_from_positions(positions, n_visual)
        index = positions.unsqueeze(-1).expand(-1, -1, hidden)
        masked = tokens.gather(1, index)  # positions in ascending order
        cost = matching.euclidean_cost(masked.detach(), self.pool.detach())
        rows = matching.assign(cost, self.settings.matching)  # [images, n_masked], no gradient
        row_cost = cost.gather(-1, rows.unsqueeze(-1)).squeeze(-1)
        # gradient reaches exactly the gathered pool rows (and the tokens that were not replaced)
        replaced = tokens.scatter(1, index, self.pool[rows].to(tokens.dtype))
        return replaced, mask, rows, row_cost

    def check_ready(self) -> None:
        """Refuse to train an unseeded `tokens` pool. One host read of `pool_ready`, on the first
        training forward (and after a state load), never on every step."""
        if not bool(self.pool_ready):
            raise RuntimeError("pool_init='tokens': the pool has not been seeded; call seed_pool(tokens) before "
                               "training (victor's train_stage does this from the first batches of the data)")
        self._ready = True

    def forward(self, input_ids, attention_mask=None, labels=None, pixel_values=None, image_keys=None,
                mask_step: int = 0, num_items_in_batch=None, num_recon_items=None, return_logits: bool | None = None,
                **kwargs):
        """Every batch, text-only or not, runs the LLM through `run_llm` under the stage's attention
        mode, so a sample's logits and loss do not depend on its batch mates: in `prefix` mode a
        text-only sample's prompt is bidirectional whether or not an image sample shares its batch.

        Normalisation (docs/method.md): with `num_items_in_batch` and `num_recon_items` (the answer
        tokens and reconstructed positions of the whole global batch) each term is this
        micro-batch's share of a global-batch mean; without them, this micro-batch's own mean.
        Visual positions under padding (the collator's blank image of a text-only batch, which
        keeps every rank running the same modules) count nowhere: no loss, no pool usage.

        Full-vocabulary logits are returned only when asked (`return_logits`; by default in eval
        mode, not in training): the training loss is a chunked linear + cross-entropy that never
        holds them (`lm_loss.chunked_lm_loss`). Statistics come back as 0-dim tensors, read by
        the host only on logging steps."""
        llava = self.llava
        want_logits = (not self.training) if return_logits is None else return_logits
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        embeds = llava.get_input_embeddings()(input_ids)
        if labels is None:  # like any transformers model: logits, no loss
            if pixel_values is not None:
                tokens = torch.stack(list(llava.model.get_image_features(pixel_values=pixel_values).pooler_output))
                replaced = self.mask_and_match(tokens, image_keys, mask_step)[0]
                embeds = self.place_visual(embeds, input_ids, replaced)[0]
            logits = llava.lm_head(self.run_llm(embeds, input_ids, attention_mask, None))
            return {"loss": None, "logits": logits, "lm_loss": None, "recon_loss": None, "stats": {}}
        if pixel_values is None:  # a text-only batch: nothing to mask or reconstruct
            self._count_usage(torch.zeros_like(self.usage))  # every rank joins the same collectives
            logits, lm_loss = self.language_model_loss(embeds, input_ids, attention_mask, labels, num_items_in_batch,
                                                       return_logits=want_logits)
            return {"loss": lm_loss, "logits": logits, "lm_loss": lm_loss, "recon_loss": lm_loss.new_zeros(()),
                    "stats": {}}
        vision_out = llava.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        tokens = torch.stack(list(vision_out.pooler_output))  # [images, n_visual, hidden]
        if not getattr(self, "_ready", False):
            self.check_ready()
        target = self._target(tokens, vision_out)
        replaced, mask, rows, row_cost = self.mask_and_match(tokens, image_keys, mask_step)

        embeds, positions = self.place_visual(embeds, input_ids, replaced)
        real = attention_mask.reshape(-1)[positions].view(mask.shape).bool()  # False: a blank image's padding
        logits, lm_loss, hidden = self.language_model_loss(embeds, input_ids, attention_mask, labels,
                                                           num_items_in_batch, return_hidden=True,
                                                           return_logits=want_logits)
        visual_hidden = hidden.reshape(-1, hidden.shape[-1])[positions].view(*tokens.shape[:2], -1)
        per_position = self.reconstruction_error(self.head(visual_hidden), target)
        weights = self.recon_weights(mask, real)
        recon_loss = (per_position * weights).sum() / (weights.sum().clamp(min=1) if num_recon_items is None
                                                       else torch.as_tensor(num_recon_items).clamp(min=1))
        loss = lm_loss + self.settings.recon_weight * recon_loss
        return {
            "loss": loss,
            "logits": logits,
            "lm_loss": lm_loss,
            "recon_loss": recon_loss,
            "stats": self._stats(rows, row_cost, per_position.detach(), mask, real[:, 0]),
        }

    def place_visual(self, embeds, input_ids, replaced):
        """Write the images' (replaced) tokens at the image-token positions -> (embeds, flat positions)."""
        positions = image_positions(input_ids == self.llava.config.image_token_id,
                                    replaced.shape[0] * replaced.shape[1])
        flat = embeds.reshape(-1, embeds.shape[-1])
        flat = flat.index_copy(0, positions, replaced.reshape(-1, replaced.shape[-1]).to(embeds.dtype))
        return flat.view_as(embeds), positions

    def recon_weights(self, mask: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """1 at the visual positions the reconstruction term averages over, else 0: [images, n_visual]."""
        chosen = mask if self.settings.recon_positions == "masked" else torch.ones_like(mask)
        return (chosen & real).float()

    def recon_items(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """How many visual positions of this batch the reconstruction term averages over (what
        `recon_weights` sums to), counted from the token ids alone, so a trainer can add it up over
        a global batch before any forward pass."""
        real = ((input_ids == self.llava.config.image_token_id) & attention_mask.bool()).sum()
        if self.settings.recon_positions == "all":
            return real
        return real // self.n_visual * self.settings.masked_count(self.n_visual)

    def language_model_loss(self, embeds, input_ids, attention_mask, labels, num_items_in_batch=None,
                            return_hidden: bool = False, return_logits: bool = True):
        """-> (logits or None, LM cross-entropy[, final hidden states]) under this stage's attention mode.

        With `return_logits` the plain path (full logits, the model's own loss function); without,
        `lm_loss.lm_loss` computes the same value chunk by chunk."""
        lcfg = self.llava.config
        hidden = self.run_llm(embeds, input_ids, attention_mask, labels)
        if return_logits:
            logits = self.llava.lm_head(hidden)
            lm_loss = self.llava.loss_function(logits=logits, labels=labels, vocab_size=lcfg.text_config.vocab_size,
                                               num_items_in_batch=num_items_in_batch)
        else:
            logits, lm_loss = None, chunked_lm_loss(hidden, self.llava.lm_head, labels, num_items_in_batch)
        return (logits, lm_loss, hidden) if return_hidden else (logits, lm_loss)

    def run_llm(self, embeds, input_ids, attention_mask, labels):
        """Final hidden states of the LLM under this stage's attention mode."""
        lcfg = self.llava.config
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        blocks = block_ids(input_ids, attention_mask, labels, lcfg.image_token_id, self.n_visual, self.settings.attention)
        attn = build_attention_mask(lcfg.text_config, embeds, attention_mask, position_ids, blocks)
        return self.llava.model(inputs_embeds=embeds, attention_mask=attn, position_ids=position_ids).last_hidden_state

    def _target(self, tokens, vision_out):
        if self.settings.recon_target == "projector":
            return F.normalize(tokens.detach().float(), dim=-1)
        strategy = self.llava.config.vision_feature_select_strategy
        feats = vision_out.hidden_states[self.llava.config.vision_feature_layer]
        return (feats[:, 1:] if strategy == "default" else feats).detach().float()

    def reconstruction_error(self, prediction, target):
        """SmoothL1(beta) per visual position, averaged over channels -> [images, n_visual]."""
        err = F.smooth_l1_loss(prediction.float(), target, beta=self.settings.recon_beta, reduction="none")
        return err.mean(dim=-1)

    def _count_usage(self, counts: torch.Tensor) -> torch.Tensor:
        """Pool rows matched in this step over all processes; added to the run's `usage` in training.

        Summed across ranks (one all-reduce per forward, on every rank), so usage and the logged
        pool statistics describe the global batch, and every rank holds the same counters."""
        with torch.no_grad():
            if self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(counts)
            if self.training:
                self.usage += counts
            return counts

    def _stats(self, rows, row_cost, per_position, mask, image_real=None):
        """Pool, matching and reconstruction statistics of the real images (not a blank one), as
        0-dim float tensors: weighted sums, no boolean indexing, nothing read by the host."""
        with torch.no_grad():
            if image_real is None:
                image_real = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
            hits = image_real[:, None].expand_as(rows).reshape(-1).long()
            counts = self._count_usage(torch.zeros_like(self.usage).scatter_add_(0, rows.reshape(-1), hits)).float()
            p = counts / counts.sum().clamp(min=1)
            run_p = self.usage.float() / self.usage.sum().clamp(min=1)
            images = image_real.float()
            n_images = images.sum()  # 0 (no real image): the means below are nan, as a mean of nothing is
            distinct = ((rows.sort(dim=1).values.diff(dim=1) != 0).sum(dim=1) + 1).float()
            masked, visible = mask & image_real[:, None], ~mask & image_real[:, None]
            zero = per_position.new_zeros(())
            return {
                "pool/rows_used_batch": (counts > 0).sum().float(),
                "pool/rows_used_run": (self.usage > 0).sum().float(),
                "pool/perplexity_batch": (-torch.special.xlogy(p, p).sum()).exp(),
                "pool/perplexity_run": (-torch.special.xlogy(run_p, run_p).sum()).exp(),
                "pool/distinct_rows_per_image": (distinct * images).sum() / n_images,
                "match/mean_cost": (row_cost.float() * images[:, None]).sum() / (n_images * rows.shape[1]),
                "recon/masked": torch.where(masked, per_position, zero).sum() / masked.sum(),
                "recon/visible": torch.where(visible, per_position, zero).sum() / visible.sum(),
            }

    # -- what leaves the stage -------------------------------------------------------------
    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        """Pool, head and counters: saved beside the LLaVA checkpoint so stage 1.5 can resume."""
        state = {"pool": self.pool.detach(), "pool_ready": self.pool_ready, "usage": self.usage}
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return state

    def save_state(self, directory, state: dict[str, torch.Tensor] | None = None):
        """Write pool, head and counters beside a LLaVA checkpoint (`comprehension_state`): `state` is
        what an engine gathered (ZeRO-3, FSDP), else this module's own `extra_state_dict()`."""
        return comprehension_state.save_state(self.extra_state_dict() if state is None else state, directory)

    def load_state(self, directory) -> None:
        """Continue exactly from the state `save_state` wrote (pool, head, counters)."""
        self.load_extra_state_dict(comprehension_state.load_state(directory))

    def load_extra_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._ready = False  # checked again on the next training forward
        with torch.no_grad():
            self.pool.copy_(state["pool"])
            self.pool_ready.copy_(state["pool_ready"])
            self.usage.copy_(state["usage"])
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})

    # Trainer reads `config` and calls these on the model it trains
    @property
    def config(self):
        return self.llava.config

    def activation_checkpointing_enable(self, **kwargs):
        self.llava.activation_checkpointing_enable(**kwargs)

    def activation_checkpointing_disable(self):
        self.llava.activation_checkpointing_disable()
