"""The tiny world's vocabulary and scenes: 1-3 coloured shapes in a 3x3 grid of regions on a
cluttered background, sampled from a seeded generator and rendered with Pillow + numpy."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw

from victor.data.templates import IMAGE_TOKEN

# Vocabulary
# --------------------------------------------------------------------------------------

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 235),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 210),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
COLOUR_NAMES: list[str] = list(COLOURS)
SHAPES: list[str] = ["circle", "square", "triangle", "cross", "diamond", "star"]
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "cross": "crosses",
    "diamond": "diamonds",
    "star": "stars",
}
SIZES: list[str] = ["small", "large"]
POSITIONS: list[str] = [
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
]
NUMBER_WORDS: list[str] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
QUESTION_TYPES: list[str] = ["colour", "shape", "count", "position", "existence"]
# held-out fine-detail questions (val/fine.jsonl): each needs a detail that stage-1 captions
# (`short_caption`: the objects' colours and shapes only) never state
FINE_TYPES: list[str] = ["size"]

MMBENCH_L2 = {
    "colour": "perception",
    "shape": "perception",
    "existence": "perception",
    "count": "reasoning",
    "position": "reasoning",
}
POPE_KINDS = ("random", "popular", "adversarial")

DETAIL_PROMPTS = [
    "Describe the image in detail.",
    "Give a detailed description of the image.",
    "Describe every object in the picture and where it is.",
    "What is in this image? Describe it in detail.",
    "Explain what you see in the image, object by object.",
]
MC_HINTS = [
    "The image shows simple shapes on a cluttered background.",
    "Thin lines and dots in the background are not objects.",
    "The image is divided into a three by three grid of regions.",
]

# special tokens, in id order (ids 0..4)
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, IMAGE_TOKEN]
PAD_ID, UNK_ID, BOS_ID, EOS_ID, IMAGE_ID = range(5)

# streams of the seed sequence (train and val images come from separate streams)
_S_TRAIN_SCENE, _S_VAL_SCENE, _S_TRAIN_TEXT, _S_TEXT_ONLY, _S_VAL_QA, _S_VAL_MC, _S_VAL_POPE, _S_VAL_FINE = range(1, 9)


@dataclass
class WorldConfig:
    seed: int = 0
    n_train: int = 2000
    n_val: int = 200
    image_size: int = 64
    clutter: float = 1.0          # 0 = plain background, no marks; 1 = default; >1 busier
    max_objects: int = 3
    min_objects: int = 1
    popularity_skew: float = 0.6  # object (colour, shape) frequencies ~ rank^-skew; 0 = uniform
    text_only_frac: float = 0.05  # fraction of stage-2 records without an image
    val_qa_per_image: int = 1     # open questions per val image (types cycle -> balanced)
    supersample: int = 4          # shapes are drawn at this scale, then box-downsampled

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise ValueError("need 1 <= min_objects <= max_objects <= 9 (3x3 grid)")
        if self.image_size < 24:
            raise ValueError("image_size must be >= 24")

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})




def _rng(seed: int, stream: int, i: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, int(i)])


def _weights(n: int, skew: float) -> np.ndarray:
    w = (np.arange(n) + 1.0) ** (-float(skew))
    return w / w.sum()


def _muted(rng: np.random.Generator, vmin: float, vmax: float, smax: float) -> tuple[float, float, float]:
    """A low-saturation colour (HSV -> RGB), far from the saturated object palette."""
    h = rng.random()
    s = rng.uniform(0.0, smax)
    v = rng.uniform(vmin, vmax)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (r * 255, g * 255, b * 255)


def _sizes_px(image_size: int) -> dict[str, int]:
    return {"large": max(8, round(0.32 * image_size)), "small": max(5, round(0.22 * image_size))}


def sample_scene(rng: np.random.Generator, cfg: WorldConfig) -> dict:
    """Objects (unique (colour, shape) pairs, at most one per grid region) and background."""
    S = cfg.image_size
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    regions = sorted(int(r) for r in rng.choice(9, size=n, replace=False))
    cw = _weights(len(COLOUR_NAMES), cfg.popularity_skew)
    sw = _weights(len(SHAPES), cfg.popularity_skew)
    cell = S / 3.0
    px = _sizes_px(S)
    objects, used = [], set()
    for region in regions:
        while True:
            colour = COLOUR_NAMES[int(rng.choice(len(COLOUR_NAMES), p=cw))]
            shape = SHAPES[int(rng.choice(len(SHAPES), p=sw))]
            if (colour, shape) not in used:
                used.add((colour, shape))
                break
        size = SIZES[int(rng.integers(2))]
        d = px[size]
        jmax = max(0.0, (cell - d) / 2.0 - 1.0)
        row, col = divmod(region, 3)
        cx = (col + 0.5) * cell + rng.uniform(-jmax, jmax)
        cy = (row + 0.5) * cell + rng.uniform(-jmax, jmax)
        objects.append({
            "colour": colour, "shape": shape, "size": size, "position": POSITIONS[region],
            "region": region, "center": [round(cx, 2), round(cy, 2)], "size_px": d,
        })
    c = float(cfg.clutter)
    if c <= 0:
        background = {"kind": "plain", "lines": 0, "dots": 0}
    else:
        kind = "gradient" if rng.random() < 0.5 else "noise"
        n_marks = int(rng.integers(round(6 * c), round(14 * c) + 1))
        lines = int(rng.binomial(n_marks, 0.5))
        background = {"kind": kind, "lines": lines, "dots": n_marks - lines}
    return {"objects": objects, "background": background}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, d: float, fill) -> None:
    r = d / 2.0
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = r * 0.86
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.85), (cx - r, cy + r * 0.85)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "cross":
        a = r * 0.36
        draw.rectangle([cx - r, cy - a, cx + r, cy + a], fill=fill)
        draw.rectangle([cx - a, cy - r, cx + a, cy + r], fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            ang = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.48
            pts.append((cx + rr * math.cos(ang), cy + r * 0.08 + rr * math.sin(ang)))
        draw.polygon(pts, fill=fill)
    else:  # pragma: no cover
        raise ValueError(shape)


def render_scene(scene: dict, rng: np.random.Generator, cfg: WorldConfig) -> np.ndarray:
    """Render a scene to an (S, S, 3) uint8 array. Uses ``rng`` for background pixels/marks."""
    S, ss, c = cfg.image_size, max(1, int(cfg.supersample)), float(cfg.clutter)
    bg = scene["background"]
    base = np.array(_muted(rng, 0.22, 0.5, 0.35), dtype=np.float32)
    if bg["kind"] == "plain":
        arr = np.broadcast_to(base, (S, S, 3)).astype(np.float32)
    else:
        if bg["kind"] == "gradient":
            other = np.array(_muted(rng, 0.22, 0.55, 0.35), dtype=np.float32)
            ang = rng.uniform(0, 2 * math.pi)
            yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / (S - 1)
            t = (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang)
            t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
            arr = base * (1 - t[..., None]) + other * t[..., None]
        else:  # low-frequency coloured blotches
            g = 5
            amp = min(c, 2.0)
            blot = (rng.normal(0.0, 18.0 * amp, size=(g, g, 1)) + rng.normal(0.0, 7.0 * amp, size=(g, g, 3)))
            blot = blot.astype(np.float32)
            blot_img = Image.fromarray(np.clip(blot + 128, 0, 255).astype(np.uint8)).resize((S, S), Image.BILINEAR)
            arr = base + (np.asarray(blot_img, dtype=np.float32) - 128)
        arr = arr + rng.normal(0.0, 9.0 * min(c, 2.0), size=(S, S, 3)).astype(np.float32)
    arr = np.clip(arr, 0, 165).astype(np.uint8)
    img = Image.fromarray(arr)
    if ss > 1:
        img = img.resize((S * ss, S * ss), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    # distractor marks: thin short lines and dots in muted colours (drawn under the objects)
    marks = ["line"] * bg["lines"] + ["dot"] * bg["dots"]
    for m in marks:
        col = tuple(int(v) for v in _muted(rng, 0.4, 0.68, 0.3))
        x, y = rng.uniform(1, S - 1), rng.uniform(1, S - 1)
        if m == "line":
            L = rng.uniform(3, max(4.0, S / 8))
            a = rng.uniform(0, math.pi)
            x2, y2 = x + L * math.cos(a), y + L * math.sin(a)
            draw.line([(x * ss, y * ss), (x2 * ss, y2 * ss)], fill=col, width=ss)
        else:
            rr = rng.uniform(0.5, 1.0) * ss
            draw.ellipse([x * ss - rr, y * ss - rr, x * ss + rr, y * ss + rr], fill=col)
    for o in scene["objects"]:
        cx, cy = o["center"]
        _draw_shape(draw, o["shape"], cx * ss, cy * ss, o["size_px"] * ss, COLOURS[o["colour"]])
    if ss > 1:
        img = img.reduce(ss)
    return np.asarray(img, dtype=np.uint8)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


