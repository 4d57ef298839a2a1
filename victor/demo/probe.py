"""`victor probe`: what the LLM keeps of the image at its visual positions, read by linear probes.

For held-out images of the tiny world, the LLM's hidden states at the 9 visual positions (one
per region of the 3x3 grid, row-major) are taken after every layer, and the projector's output
(what the LLM was given: the embedding layer's output at those positions) beside them. One
linear probe per (layer, attribute) reads region r's attribute from position r's vector:

* occupancy: is there an object in the region (all regions);
* colour, shape, size: which one (regions that hold an object); size is what the fine-detail
  questions ask, and the tiny encoder is not pretrained on it (`victor.tiny.pretrain.VISION_ATTRIBUTES`).

Probes are closed-form ridge classifiers (least squares on one-hot targets, standardised
features, ridge strength chosen by 5-fold cross-validation on the fit images), fit on one half
of the held-out images and scored on the other half; the split is fixed, so every model is
probed on the same questions. Ground truth comes from the world's `scenes.json`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from victor.infer import user_message
from victor.model.assemble import load_model
from victor.tiny.scenes import COLOUR_NAMES, SHAPES, SIZES
from victor.tiny.world import WorldPaths, load_scenes

VALUES = {"colour": COLOUR_NAMES, "shape": SHAPES, "size": SIZES}  # size: asked by the fine-detail questions
ATTRIBUTES = ("occupancy", *VALUES)
PROMPT = "Describe the image in detail."
ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def fit_ridge(x: torch.Tensor, y: torch.Tensor, n_classes: int, alpha: float):
    """Ridge classifier: standardise, then least squares onto one-hot targets (+/-1)."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    targets = 2 * torch.nn.functional.one_hot(y, n_classes).to(x.dtype) - 1
    gram = z.T @ z
    ridge = alpha * gram.diagonal()[:-1].mean() * torch.eye(z.shape[1], dtype=x.dtype)
    ridge[-1, -1] = 0  # no penalty on the bias
    weights = torch.linalg.solve(gram + ridge, z.T @ targets)
    return lambda q: torch.cat([(q - mean) / std, torch.ones(len(q), 1, dtype=q.dtype)], 1) @ weights


def probe(x_fit, y_fit, x_test, y_test, n_classes: int, folds: int = 5, seed: int = 0) -> dict:
    """Fit on (x_fit, y_fit), choose the ridge strength by k-fold CV, score on the test set.

    Returns test accuracy, the per-sample correctness and the majority-class accuracy (the
    accuracy of always answering the fit set's most frequent label)."""
    x_fit, x_test = torch.as_tensor(x_fit, dtype=torch.float64), torch.as_tensor(x_test, dtype=torch.float64)
    y_fit, y_test = torch.as_tensor(y_fit, dtype=torch.long), torch.as_tensor(y_test, dtype=torch.long)
    order = torch.randperm(len(x_fit), generator=torch.Generator().manual_seed(seed))
    parts = order.chunk(min(folds, len(x_fit)))
    best, best_alpha = -1.0, ALPHAS[0]
    for alpha in ALPHAS:
        hits = 0
        for k, held in enumerate(parts):
            train = torch.cat([p for j, p in enumerate(parts) if j != k])
            predict = fit_ridge(x_fit[train], y_fit[train], n_classes, alpha)
            hits += int((predict(x_fit[held]).argmax(1) == y_fit[held]).sum())
        if hits > best:
            best, best_alpha = hits, alpha
    correct = fit_ridge(x_fit, y_fit, n_classes, best_alpha)(x_test).argmax(1) == y_test
    majority = int(torch.bincount(y_fit, minlength=n_classes).argmax())
    return {"accuracy": float(correct.double().mean()), "correct": correct.numpy(), "alpha": best_alpha,
            "majority": float((y_test == majority).double().mean())}


def region_labels(scene: dict) -> dict[str, list[int]]:
    """Per region (row-major): occupancy 0/1, colour, shape and size index (-1 where empty)."""
    labels = {attr: [-1] * 9 for attr in VALUES}
    for obj in scene["objects"]:
        for attr, values in VALUES.items():
            labels[attr][obj["region"]] = values.index(obj[attr])
    return {"occupancy": [int(c >= 0) for c in labels["colour"]], **labels}


def split_images(world: WorldPaths) -> tuple[list[str], list[str]]:
    """Held-out images, halved by a fixed seeded permutation: (fit, score)."""
    names = sorted(p.name for p in world.images.glob("val_*.png"))
    order = np.random.default_rng(0).permutation(len(names))
    half = len(names) // 2
    return [names[i] for i in sorted(order[:half])], [names[i] for i in sorted(order[half:])]


@torch.no_grad()
def visual_states(model_dir: str | Path, images: list[Path], batch_size: int = 64) -> tuple[list[str], torch.Tensor]:
    """Layer names and hidden states [layers + 1, images, visual tokens, hidden] at the visual positions:
    index 0 is the projector output (the LLM's input there), then the output of each LLM layer."""
    model, processor = load_model(str(model_dir))
    model.eval()
    text = processor.apply_chat_template(user_message(PROMPT, True), add_generation_prompt=True)
    image_id, out = model.config.image_token_id, []
    for start in range(0, len(images), batch_size):
        batch = [Image.open(p).convert("RGB") for p in images[start:start + batch_size]]
        inputs = processor(text=[text] * len(batch), images=batch, return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        is_image = inputs["input_ids"] == image_id
        out.append(torch.stack([h[is_image].view(len(batch), -1, h.shape[-1]).float() for h in hidden]))
    n_layers = len(out[0]) - 1
    names = ["projector"] + [f"layer {i}" for i in range(1, n_layers + 1)]
    return names, torch.cat(out, dim=1)


def probe_model(model_dir: str | Path, world: WorldPaths, fit: list[str], score: list[str]) -> dict:
    """{layer: {attribute: {"accuracy", "majority", "alpha", "correct": {unit id: 0/1}}}} for one model."""
    scenes = load_scenes(world.root)
    names, states = visual_states(model_dir, [world.images / n for n in fit + score])
    if states.shape[2] != 9:
        raise ValueError(f"{model_dir}: {states.shape[2]} visual tokens per image; the probe reads region r from "
                         "visual token r, so it needs one token per region of the 3x3 grid (the tiny recipe's "
                         "96-pixel input in 32-pixel patches)")
    labels = {a: np.array([region_labels(scenes[n])[a] for n in fit + score]) for a in ATTRIBUTES}
    is_fit = np.arange(len(fit) + len(score)) < len(fit)
    units = np.array([[f"{n}#{r}" for r in range(9)] for n in fit + score])
    results: dict = {}
    for layer, name in enumerate(names):
        x = states[layer].numpy()  # [images, 9, hidden]
        results[name] = {}
        for attr in ATTRIBUTES:
            y = labels[attr]
            keep = y >= 0
            fit_mask, test_mask = keep & is_fit[:, None], keep & ~is_fit[:, None]
            n_classes = len(VALUES[attr]) if attr in VALUES else 2  # occupancy: 0/1
            r = probe(x[fit_mask], y[fit_mask], x[test_mask], y[test_mask], n_classes)
            r["correct"] = dict(zip(units[test_mask].tolist(), r["correct"].astype(float).tolist()))
            results[name][attr] = r
    return results


def format_table(results: dict[str, dict]) -> str:
    """Accuracy (%) per model and layer, with the majority-class level in the last row."""
    attrs = " | ".join(ATTRIBUTES)
    lines = [f"| model | layer | {attrs} |", "|---|---|" + "---|" * len(ATTRIBUTES)]
    for model, layers in results.items():
        for layer, per in layers.items():
            lines.append(f"| {model} | {layer} | " + " | ".join(f"{100 * per[a]['accuracy']:.1f}"
                                                            for a in ATTRIBUTES) + " |")
    first = next(iter(next(iter(results.values())).values()))
    lines.append("| majority class | — | " + " | ".join(f"{100 * first[a]['majority']:.1f}" for a in ATTRIBUTES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="victor probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", required=True, help="a tiny world directory (victor synth / victor demo)")
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                   help="a checkpoint to probe (repeatable), e.g. --model baseline=runs/a --model victor=runs/b")
    p.add_argument("--output", help="write the accuracies (and per-question correctness) to this JSON file")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    world = WorldPaths.at(args.world)
    fit, score = split_images(world)
    results = {}
    for spec in args.model:
        name, _, path = spec.rpartition("=")
        results[name or path] = probe_model(path, world, fit, score)
    print(f"linear probes on {len(fit)} held-out images, scored on {len(score)} others (accuracy %)\n")
    print(format_table(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))
    return results
