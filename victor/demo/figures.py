"""The demo's figures: training curves, pool utilisation, accuracy per question type, probe
accuracy per layer, sample efficiency, and the masked patches of a few held-out images with the
pool rows that replaced them."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from victor.config import ComprehensionConfig
from victor.demo.probe import ATTRIBUTES
from victor.demo.results import DemoResults
from victor.model.assemble import load_model
from victor.model.comprehension import VisualComprehension


def make_figures(res: DemoResults, per_type: dict, evidence: dict | None = None) -> dict[str, str]:
    results = res.runs
    arms = [(n, c) for n, c in res.arms if res.roles.get(n, "arm") == "arm"]  # controls reuse these curves
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: report without figures (pip install 'victor[report]')")
        return {}
    figdir = res.root / "figures"
    figdir.mkdir(exist_ok=True)
    made = {}

    def history(run: Path):
        return json.loads((run / "victor_stage.json").read_text())["log_history"]

    # 1. training curves of stage 1.5
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, comprehension in arms:
        h = history(results[name, 0]["stage1_5"])
        key = "lm_loss" if comprehension else "loss"
        ax1.plot([r["step"] for r in h if key in r], [r[key] for r in h if key in r], label=name)
        if comprehension:
            ax2.plot([r["step"] for r in h if "recon_loss" in r], [r["recon_loss"] for r in h if "recon_loss" in r],
                     label=name)
    ax1.set(title="stage 1.5: LM loss (caption)", xlabel="step")
    ax2.set(title="stage 1.5: reconstruction loss", xlabel="step", yscale="log")
    ax1.legend(), ax2.legend()
    made["training curves"] = _save(fig, figdir / "training_curves.png", res.root)

    # 2. pool utilisation
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name in [n for n, comprehension in arms if comprehension]:
        h = [r for r in history(results[name, 0]["stage1_5"]) if "pool/rows_used_run" in r]
        steps = [r["step"] for r in h]
        ax1.plot(steps, [r["pool/rows_used_run"] for r in h], label=f"{name} (run)")
        ax1.plot(steps, [r["pool/rows_used_batch"] for r in h], "--", label=f"{name} (batch)")
        ax2.plot(steps, [r["pool/perplexity_batch"] for r in h], label=name)
    ax1.set(title="pool rows used", xlabel="step")
    ax2.set(title="pool usage perplexity per batch", xlabel="step")
    ax1.legend(fontsize=7), ax2.legend(fontsize=7)
    made["pool utilisation"] = _save(fig, figdir / "pool_utilisation.png", res.root)

    # 3. accuracy per question type
    keys = sorted(per_type)
    fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.9), 3.5))
    width = 0.8 / len(arms)
    for i, (name, _) in enumerate(arms):
        vals = [100 * statistics.mean(per_type[k].get(name, [0])) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], vals, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], keys, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="accuracy %", title="held-out accuracy per question type (mean over seeds)")
    ax.legend(fontsize=7)
    made["accuracy per question type"] = _save(fig, figdir / "accuracy_per_type.png", res.root)

    if evidence and evidence.get("probe"):
        made["probe accuracy per layer"] = probe_figure(evidence["probe"], figdir, res.root, plt)
    if evidence and evidence.get("sample_efficiency"):
        made["sample efficiency"] = efficiency_figure(evidence["sample_efficiency"], figdir, res.root, plt)

    # 4. masked patches and the pool rows that replaced them
    victor_arm = next(name for name, comprehension in arms if comprehension)
    made["masked patches"] = masked_patch_figure(res, results[victor_arm, 0]["stage1_5"], figdir, plt)
    return made


def probe_figure(probe: dict, figdir: Path, root: Path, plt) -> str:
    """Probe accuracy against depth (projector, layer 1, ...), one line per arm and checkpoint."""
    attrs = ATTRIBUTES
    fig, axes = plt.subplots(1, len(attrs), figsize=(4 * len(attrs), 3.5))
    lines: dict[str, list] = {}
    for key, values in probe.items():
        arm, checkpoint, layer = key.split(" | ")
        lines.setdefault(f"{arm} ({checkpoint})", []).append((layer, values))
    for ax, attr in zip(axes, attrs):
        for label, points in lines.items():
            ax.errorbar(range(len(points)), [100 * v[attr][0] for _, v in points],
                        yerr=[100 * v[attr][1] for _, v in points], label=label, capsize=2,
                        linestyle="--" if "1.5" in label else "-")
            ax.set_xticks(range(len(points)), [layer for layer, _ in points], fontsize=7)
        ax.axhline(100 * next(iter(probe.values()))["majority"][attr], color="grey", lw=0.8, ls=":")
        ax.set(title=f"probe: {attr}", ylabel="accuracy %")
    axes[0].legend(fontsize=6)
    return _save(fig, figdir / "probe_per_layer.png", root)


def efficiency_figure(efficiency: dict, figdir: Path, root: Path, plt) -> str:
    """Likelihood-scored accuracy against the share of stage-2 data, per arm (bars: 95% t-interval over seeds)."""
    from victor.demo.evidence import MEASURES

    measures = (("mmbench", "MMBench acc"), ("mmbench_text", "MMBench acc (option text)"), ("pope", "POPE acc"),
                ("gqa_loglik", "open QA gold log-lik"))
    fig, axes = plt.subplots(1, len(measures), figsize=(4 * len(measures), 3.5))
    arms: dict[str, list] = {}
    for key, values in efficiency.items():
        arm, share = key.split(" | ")
        arms.setdefault(arm, []).append((float(share), values))
    for ax, (measure, title) in zip(axes, measures):
        _, _, _, scale, unit = MEASURES[measure]  # points x 100 for %, nats as they are
        for arm, points in arms.items():
            points.sort(key=lambda p: p[0])
            mean = [v[measure][0] for _, v in points]  # [mean, low, high]: the 95% t-interval over seeds
            low = [m - v[measure][1] if np.isfinite(v[measure][1]) else 0.0 for m, (_, v) in zip(mean, points)]
            high = [v[measure][2] - m if np.isfinite(v[measure][2]) else 0.0 for m, (_, v) in zip(mean, points)]
            ax.errorbar([100 * p for p, _ in points], [scale * m for m in mean],
                        yerr=[[scale * x for x in low], [scale * x for x in high]], label=arm, marker="o", capsize=2)
        ax.set(title=title, xlabel="% of stage-2 data", ylabel="accuracy %" if unit == "points" else unit)
    axes[0].legend(fontsize=7)
    return _save(fig, figdir / "sample_efficiency.png", root)


def _save(fig, path: Path, root: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path.relative_to(root))


def masked_patch_figure(res: DemoResults, stage15: Path, figdir: Path, plt) -> str:
    """A few held-out images: masked patches tinted by the pool row that replaced them."""
    model, processor = load_model(str(stage15))
    settings = json.loads((stage15 / "victor_stage.json").read_text())["comprehension_config"]
    vc = VisualComprehension(model, ComprehensionConfig(**settings)).eval()
    vc.load_state(stage15)
    names = sorted(p.name for p in res.world.images.glob("val_*.png"))[:4]
    images = [Image.open(res.world.images / n).convert("RGB") for n in names]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    torch.manual_seed(0)
    with torch.no_grad():
        tokens = torch.stack(list(model.model.get_image_features(pixel_values=pixels).pooler_output))
        _, mask, rows, _ = vc.mask_and_match(tokens)
    side = int(round(mask.shape[1] ** 0.5))
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(2, len(images), figsize=(2.6 * len(images), 5.4))
    for i, img in enumerate(images):
        size = img.size[0]
        axes[0, i].imshow(img)
        axes[0, i].set_title(names[i], fontsize=8)
        tinted = np.asarray(img.resize((size, size))).astype(float) / 255
        cell = size / side
        for pos, row in zip(mask[i].nonzero().flatten().tolist(), rows[i].tolist()):
            r, c = divmod(pos, side)
            y0, x0 = int(r * cell), int(c * cell)
            tinted[y0:int(y0 + cell), x0:int(x0 + cell)] = 0.35 * tinted[y0:int(y0 + cell), x0:int(x0 + cell)] + \
                0.65 * np.asarray(cmap(row % 20)[:3])
        axes[1, i].imshow(tinted)
        axes[1, i].set_title(f"{int(mask[i].sum())} masked, {rows[i].unique().numel()} pool rows", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("masked patches, tinted by the pool row (colour = row id mod 20) that replaced them", fontsize=9)
    return _save(fig, figdir / "masked_patches.png", res.root)


