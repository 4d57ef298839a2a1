"""The stage-1.5 objective on held-out images, for every arm: reconstruct masked visual tokens.

For one stage-1.5 checkpoint: mask each image's visual tokens as stage 1.5 does (the same
keyed masks for every arm), replace them by their matched pool rows, run the LLM (under the
arm's attention mode, on the chat prompt up to the answer, which is all a visual position sees)
and read the final hidden states at the visual positions. A linear head is then fitted in closed
form (least squares) on the frozen states of as many training images as the victor arm's head
saw in stage 1.5 (steps x batch size), and scored on the held-out images: SmoothL1 error (the
stage-1.5 loss) per masked and per visible position. A closed-form fit removes the optimiser
from the comparison: a fresh head trained by SGD for the stage's few steps does not even reach
the error of a constant prediction. A ViCToR arm's pool is its own; the baseline has none, so its
pool is seeded exactly as stage 1.5 seeds one (real visual tokens of the first training images).
A ViCToR arm is also scored with the head it trained in stage 1.5 ("own"). "constant" is the
error of always predicting the mean target; "relative" divides the fitted head's errors by the
constant one's masked error (each arm's target is its own projector's output, which stage 1.5
moves differently per arm).
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from victor.config import ComprehensionConfig
from victor.data.collate import LlavaCollator
from victor.data.llava import LlavaDataset
from victor.infer import user_message
from victor.model.assemble import load_model
from victor.model.comprehension import VisualComprehension
from victor.model.comprehension_state import has_state
from victor.train.engine import first_visual_tokens

PROMPT = "Describe the image in detail."
VAL_KEY = 1_000_000  # mask keys of held-out images (training images use their index)


@torch.no_grad()
def masked_states(vc: VisualComprehension, processor, images: list[Path], keys: list[int], batch_size: int = 64):
    """(hidden [N, n_visual, H] at visual positions, target [N, n_visual, D], mask [N, n_visual],
    (tokens, replaced) [N, n_visual, D]: the projected tokens and what the LLM got in their place)."""
    llava, image_id = vc.llava, vc.llava.config.image_token_id
    text = processor.apply_chat_template(user_message(PROMPT, True), add_generation_prompt=True)
    hiddens, targets, masks, originals, replacements = [], [], [], [], []
    for start in range(0, len(images), batch_size):
        batch = [Image.open(p).convert("RGB") for p in images[start:start + batch_size]]
        inputs = processor(text=[text] * len(batch), images=batch, return_tensors="pt")
        pixels = inputs["pixel_values"].to(next(llava.parameters()).dtype)
        vision_out = llava.model.get_image_features(pixel_values=pixels, return_dict=True)
        tokens = torch.stack(list(vision_out.pooler_output))
        target = vc._target(tokens, vision_out)
        replaced, mask, _, _ = vc.mask_and_match(tokens, torch.tensor(keys[start:start + batch_size]), step=0)
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        is_image = ids == image_id
        embeds = llava.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter(is_image.unsqueeze(-1), replaced.reshape(-1, replaced.shape[-1]).to(embeds.dtype))
        hidden = vc.run_llm(embeds, ids, attention, torch.full_like(ids, -100))
        hiddens.append(hidden[is_image].view(*tokens.shape[:2], -1).float())
        targets.append(target.float())
        masks.append(mask)
        originals.append(tokens.float())
        replacements.append(replaced.float())
    return torch.cat(hiddens), torch.cat(targets), torch.cat(masks), (torch.cat(originals), torch.cat(replacements))


# The masking removes information when a masked token's replacement is, on average, at least half as far
# from the token as the mean token is (squared distances): a replacement much closer than that is a
# near-copy, and the reconstruction task can be solved without the context.
REMOVES_INFORMATION = 0.5


def masking_information(tokens: torch.Tensor, replaced: torch.Tensor, mask: torch.Tensor,
                        mean_token: torch.Tensor | None = None) -> dict:
    """How much of a masked token survives in its replacement. `replacement distance`: mean squared
    distance between a masked token and its replacement, divided by the mean squared distance between
    a masked token and the mean token (0: the replacement is a copy; 1: it tells as little as the mean
    token); `replacement cosine`: their mean cosine similarity; `removes information`: the ratio is at
    least `REMOVES_INFORMATION`."""
    mean_token = tokens.reshape(-1, tokens.shape[-1]).mean(0) if mean_token is None else mean_token
    t, r = tokens[mask].double(), replaced[mask].double()
    if not len(t):
        return {"replacement distance": float("nan"), "replacement cosine": float("nan"), "removes information": False}
    spread = ((t - mean_token.double()) ** 2).sum(-1).mean()
    ratio = float(((r - t) ** 2).sum(-1).mean() / spread.clamp_min(1e-12))
    cosine = float(torch.nn.functional.cosine_similarity(r, t, dim=-1).mean())
    return {"replacement distance": ratio, "replacement cosine": cosine, "removes information": ratio >= REMOVES_INFORMATION}


def fit_head(hidden: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3):
    """A linear head (with bias) fitted in closed form: least squares from hidden states to targets over
    every visual position of the fit images, a small ridge relative to the features' scale."""
    x = hidden.reshape(-1, hidden.shape[-1]).double()
    y = target.reshape(-1, target.shape[-1]).double()
    z = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    gram = z.T @ z
    penalty = ridge * gram.diagonal()[:-1].mean() * torch.eye(z.shape[1], dtype=x.dtype)
    penalty[-1, -1] = 0
    weights = torch.linalg.solve(gram + penalty, z.T @ y).float()
    return lambda h: torch.cat([h, torch.ones(*h.shape[:-1], 1)], dim=-1) @ weights


@torch.no_grad()
def errors(vc, head, hidden, target, mask, names: list[str]) -> dict:
    """Mean SmoothL1 error on masked and visible positions, and per image (masked)."""
    per_position = vc.reconstruction_error(head(hidden) if head is not None else hidden, target)
    masked = (per_position * mask).sum(1) / mask.sum(1).clamp_min(1)
    visible = (per_position * ~mask).sum(1) / (~mask).sum(1).clamp_min(1)
    return {"masked": float(masked.mean()), "visible": float(visible.mean()),
            "per_image": dict(zip(names, masked.tolist()))}


def reconstruction(stage15: str | Path, world, config: ComprehensionConfig, steps: int, batch_size: int,
                   seed: int = 0) -> dict:
    """Held-out reconstruction errors of one stage-1.5 checkpoint (see the module docstring)."""
    model, processor = load_model(str(stage15))
    model.eval()
    vc = VisualComprehension(model, config, mask_seed=seed).eval()
    own = has_state(stage15)
    if own:
        vc.load_state(stage15)
    elif config.pool_init == "tokens":
        dataset = LlavaDataset(str(world.stage15), str(world.images))
        collator = LlavaCollator(processor, vc.n_visual, "chat", 512, image_keys=True)
        tokens = first_visual_tokens(vc, dataset, collator, want=vc.pool.shape[0], batch_size=16, seed=seed)
        vc.seed_pool(tokens, generator=torch.Generator().manual_seed(seed))
    train = sorted(p.name for p in world.images.glob("train_*.png"))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    fit_names = [train[i] for i in order[:steps * batch_size]]
    val = sorted(p.name for p in world.images.glob("val_*.png"))
    fit = masked_states(vc, processor, [world.images / n for n in fit_names], [int(n[6:11]) for n in fit_names])
    held = masked_states(vc, processor, [world.images / n for n in val], [VAL_KEY + int(n[4:9]) for n in val])
    (tokens, replaced), fit, held = held[3], fit[:3], held[:3]
    positions = fit[2] if config.recon_positions == "masked" else torch.ones_like(fit[2])
    head = fit_head(fit[0][positions], fit[1][positions])
    mean_target = fit[1].mean(dim=(0, 1))
    out = {"fitted": errors(vc, head, *held, val),
           "constant": errors(vc, None, mean_target.expand_as(held[1]), held[1], held[2], val)}
    if own:
        out["own"] = errors(vc, vc.head, *held, val)
    # each arm reconstructs its own projector's tokens: relative to always predicting their mean,
    # errors are comparable between arms whose projectors moved differently in stage 1.5
    floor = out["constant"]["masked"]
    out["relative"] = {"masked": out["fitted"]["masked"] / floor, "visible": out["fitted"]["visible"] / floor,
                       "per_image": {k: v / floor for k, v in out["fitted"]["per_image"].items()}}
    # the masking-information check: how close replacements are to what they replace, and how much better
    # than always predicting the mean target the heads do on masked positions (< 1: better)
    out["masking"] = masking_information(tokens, replaced, held[2]) | {
        "fitted head / mean predictor (masked)": out["relative"]["masked"],
        **({"own head / mean predictor (masked)": out["own"]["masked"] / floor} if own else {})}
    return out
