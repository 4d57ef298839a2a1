"""The tiny world: a procedurally generated multimodal data set that runs on a laptop CPU.

Images are small (64x64 by default) scenes of 1-3 coloured shapes placed in a 3x3 grid of
regions on a cluttered background (noise / gradient plus thin distractor marks in muted
colours). Every image comes with the texts of all training stages and the held-out
benchmarks, written in the standard LLaVA / MMBench / POPE layouts so that the loaders and
evaluators that serve real data serve the tiny world unchanged:

    out_dir/images/{train|val}_{i:05d}.png
    out_dir/train/stage1.json      short captions            (LLaVA conversation JSON)
    out_dir/train/stage15.json     detailed captions         (LLaVA conversation JSON)
    out_dir/train/stage2.json      instructions, multi-turn, ~5% text-only
    out_dir/val/qa.json            open questions, balanced over the 5 question types
    out_dir/val/mmbench.tsv        multiple choice, MMBench TSV layout with circular copies
    out_dir/val/pope/coco_pope_{random,popular,adversarial}.json   POPE JSONL layout
    out_dir/scenes.json            ground-truth scene of every image (objects, background)
    out_dir/meta.json              config, counts, vocabulary, file list

Everything is deterministic given ``WorldConfig.seed`` (byte-identical files), pure Pillow +
numpy. The module also builds the world's word-level tokenizer and the tiny backbone configs
of the "tiny" recipe.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from victor.data import templates

# --------------------------------------------------------------------------------------
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

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
OPTION_LETTERS = "ABCD"
MMBENCH_COLUMNS = [
    "index", "question", "hint", "A", "B", "C", "D", "answer",
    "category", "l2-category", "image", "split",
]
MMBENCH_L2 = {
    "colour": "perception",
    "shape": "perception",
    "existence": "perception",
    "count": "reasoning",
    "position": "reasoning",
}
CIRCULAR_OFFSET = 1_000_000
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
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, templates.IMAGE_TOKEN]
PAD_ID, UNK_ID, BOS_ID, EOS_ID, IMAGE_ID = range(5)

# streams of the seed sequence (train and val images come from separate streams)
_S_TRAIN_SCENE, _S_VAL_SCENE, _S_TRAIN_TEXT, _S_TEXT_ONLY, _S_VAL_QA, _S_VAL_MC, _S_VAL_POPE = range(1, 8)


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


@dataclass
class WorldPaths:
    root: Path
    images: Path
    stage1: Path
    stage15: Path
    stage2: Path
    val_qa: Path
    mmbench: Path
    gqa: Path
    pope: dict[str, Path] = field(default_factory=dict)
    scenes: Path | None = None
    meta: Path | None = None

    @classmethod
    def at(cls, out_dir: str | os.PathLike) -> "WorldPaths":
        root = Path(out_dir)
        return cls(
            root=root,
            images=root / "images",
            stage1=root / "train" / "stage1.json",
            stage15=root / "train" / "stage15.json",
            stage2=root / "train" / "stage2.json",
            val_qa=root / "val" / "qa.json",
            mmbench=root / "val" / "mmbench.tsv",
            gqa=root / "val" / "gqa.jsonl",
            pope={k: root / "val" / "pope" / f"coco_pope_{k}.json" for k in POPE_KINDS},
            scenes=root / "scenes.json",
            meta=root / "meta.json",
        )

    def data_files(self) -> list[Path]:
        return [self.stage1, self.stage15, self.stage2, self.val_qa, self.mmbench, self.gqa,
                *self.pope.values(), self.scenes, self.meta]


# --------------------------------------------------------------------------------------
# Scenes and rendering
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(colour: str, shape: str) -> str:
    return f"{_article(colour)} {colour} {shape}"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def short_caption(scene: dict) -> str:
    parts = [_phrase(o["colour"], o["shape"]) for o in scene["objects"]]
    if len(parts) == 1:
        body = parts[0]
    else:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
    return body + "."


def background_sentence(scene: dict) -> str:
    bg = scene["background"]
    if bg["kind"] == "plain":
        return "the background is plain ."
    head = "the background is a noisy gradient" if bg["kind"] == "gradient" else "the background is noisy"
    marks = []
    if bg["lines"]:
        marks.append("thin lines")
    if bg["dots"]:
        marks.append("small dots")
    return head + (" with " + " and ".join(marks) if marks else "") + " ."


def detailed_caption(scene: dict) -> str:
    objs = scene["objects"]
    n = len(objs)
    out = ["there is one object ." if n == 1 else f"there are {NUMBER_WORDS[n]} objects ."]
    for o in objs:
        out.append(f"{_article(o['size'])} {o['size']} {o['colour']} {o['shape']} is at the {o['position']} .")
    out.append(background_sentence(scene))
    return " ".join(out)


def _present(scene: dict) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in scene["objects"]}


def _absent_pairs(scene: dict) -> list[tuple[str, str]]:
    present = _present(scene)
    return [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present]


def negative_objects(scene: dict, rng: np.random.Generator, mode: str, k: int,
                     freq: dict[tuple[str, str], int] | None = None) -> list[tuple[str, str]]:
    """k distinct absent (colour, shape) pairs. random: uniform; popular: most frequent in the
    world; adversarial: sharing shape or colour with a present object (shape first)."""
    absent = _absent_pairs(scene)
    order = {p: i for i, p in enumerate(absent)}
    if mode == "random":
        idx = rng.choice(len(absent), size=min(k, len(absent)), replace=False)
        return [absent[int(i)] for i in idx]
    if mode == "popular":
        freq = freq or {}
        return sorted(absent, key=lambda p: (-freq.get(p, 0), order[p]))[:k]
    if mode == "adversarial":
        shapes = {o["shape"] for o in scene["objects"]}
        colours = {o["colour"] for o in scene["objects"]}
        same_shape = [p for p in absent if p[1] in shapes]
        same_colour = [p for p in absent if p[0] in colours and p[1] not in shapes]
        out: list[tuple[str, str]] = []
        for pool in (same_shape, same_colour, [p for p in absent if p not in same_shape and p not in same_colour]):
            pool = [pool[int(i)] for i in rng.permutation(len(pool))]
            out.extend(pool[: k - len(out)])
            if len(out) >= k:
                break
        return out
    raise ValueError(mode)


def open_question(scene: dict, qtype: str, rng: np.random.Generator,
                  want: str | None = None, freq: dict | None = None) -> tuple[str, str]:
    """One open question of type ``qtype`` about the scene and its single word/phrase answer.
    For existence questions ``want`` ("yes"/"no") fixes the answer."""
    objs = scene["objects"]
    o = objs[int(rng.integers(len(objs)))]
    shape_count = Counter(x["shape"] for x in objs)
    colour_count = Counter(x["colour"] for x in objs)
    size_count = Counter(x["size"] for x in objs)
    word = _pick(rng, ["colour", "color"])
    if qtype == "colour":
        forms = ["pos", "pos2"]
        if shape_count[o["shape"]] == 1:
            forms.append("shape")
        if size_count[o["size"]] == 1 and len(objs) > 1:
            forms.append("size")
        f = _pick(rng, forms)
        if f == "pos":
            q = f"What {word} is the object at the {o['position']}?"
        elif f == "pos2":
            q = f"What is the {word} of the shape at the {o['position']}?"
        elif f == "shape":
            q = f"What {word} is the {o['shape']}?"
        else:
            q = f"What {word} is the {o['size']} shape?"
        return q, o["colour"]
    if qtype == "shape":
        forms = ["pos"]
        if colour_count[o["colour"]] == 1:
            forms += ["colour", "colour2"]
        f = _pick(rng, forms)
        if f == "pos":
            q = f"What shape is at the {o['position']}?"
        elif f == "colour":
            q = f"What shape is the {o['colour']} object?"
        else:
            q = f"Which shape is {o['colour']}?"
        return q, o["shape"]
    if qtype == "count":
        f = _pick(rng, ["all", "all2", "shape", "colour"])
        if f in ("all", "all2"):
            q = "How many objects are there in the image?" if f == "all" else "How many shapes are in the picture?"
            return q, NUMBER_WORDS[len(objs)]
        if f == "shape":
            s = o["shape"] if rng.random() < 0.6 else _pick(rng, SHAPES)
            return f"How many {SHAPE_PLURALS[s]} are there?", NUMBER_WORDS[shape_count[s]]
        c = o["colour"] if rng.random() < 0.6 else _pick(rng, COLOUR_NAMES)
        return f"How many {c} objects are there?", NUMBER_WORDS[colour_count[c]]
    if qtype == "position":
        f = _pick(rng, ["where", "part"] + (["shape"] if shape_count[o["shape"]] == 1 else []))
        if f == "where":
            q = f"Where is the {o['colour']} {o['shape']}?"
        elif f == "part":
            q = f"In which part of the image is the {o['colour']} {o['shape']}?"
        else:
            q = f"Where is the {o['shape']}?"
        return q, o["position"]
    if qtype == "existence":
        if want is None:
            want = "yes" if rng.random() < 0.5 else "no"
        forms = ["pair", "pair"]
        shapes_absent = [s for s in SHAPES if shape_count[s] == 0]
        colours_absent = [c for c in COLOUR_NAMES if colour_count[c] == 0]
        regions_empty = [p for i, p in enumerate(POSITIONS) if i not in {x["region"] for x in objs}]
        if want == "yes" or shapes_absent:
            forms.append("shape")
        if want == "yes" or colours_absent:
            forms.append("colour")
        if want == "yes" or regions_empty:
            forms.append("region")
        f = _pick(rng, forms)
        if f == "pair":
            if want == "yes":
                c, s = o["colour"], o["shape"]
            else:
                mode = _pick(rng, ["random", "adversarial", "adversarial", "popular"])
                c, s = negative_objects(scene, rng, mode, 1, freq)[0]
            q = f"Is there {_phrase(c, s)} in the image?"
        elif f == "shape":
            s = o["shape"] if want == "yes" else _pick(rng, shapes_absent)
            q = f"Is there {_article(s)} {s} in the image?"
        elif f == "colour":
            c = o["colour"] if want == "yes" else _pick(rng, colours_absent)
            q = f"Is there {_article(c)} {c} object in the image?"
        else:
            p = o["position"] if want == "yes" else _pick(rng, regions_empty)
            q = f"Is there an object at the {p}?"
        return q, want
    raise ValueError(qtype)


def format_mc_prompt(question: str, options: list[str], hint: str | None = None) -> str:
    """The LLaVA-1.5 MMBench prompt (model_vqa_mmbench.py, single_pred_prompt), without <image>."""
    q = question if not hint else hint + "\n" + question
    for letter, opt in zip(OPTION_LETTERS, options):
        q = q + "\n" + letter + ". " + opt
    return q + "\n" + MC_SUFFIX


def mc_question(scene: dict, qtype: str, rng: np.random.Generator, cfg: WorldConfig,
                want: str | None = None, two_option: bool = False,
                freq: dict | None = None) -> tuple[str, list[str], int]:
    """(question, options, index of the correct option). 4 options, except the yes/no form."""
    if qtype == "existence" and two_option:
        q, a = open_question(scene, "existence", rng, want=want, freq=freq)
        return q, ["yes", "no"], 0 if a == "yes" else 1
    if qtype == "existence":
        o = _pick(rng, scene["objects"])
        correct = f"{o['colour']} {o['shape']}"
        negs = negative_objects(scene, rng, _pick(rng, ["adversarial", "random"]), 3, freq)
        options = [correct] + [f"{c} {s}" for c, s in negs]
        q = _pick(rng, ["Which of these objects is in the image?", "Which object can be seen in the image?"])
    else:
        q, a = open_question(scene, qtype, rng, freq=freq)
        vocab = {
            "colour": COLOUR_NAMES,
            "shape": SHAPES,
            "count": NUMBER_WORDS[: max(4, cfg.max_objects + 1)],
            "position": POSITIONS,
        }[qtype]
        others = [v for v in vocab if v != a]
        idx = rng.choice(len(others), size=3, replace=False)
        options = [a] + [others[int(i)] for i in idx]
    perm = [int(i) for i in rng.permutation(len(options))]
    options = [options[i] for i in perm]
    return q, options, perm.index(0)


def _human(question: str, rng: np.random.Generator, first: bool, last_prob: float = 0.1) -> str:
    if not first:
        return question
    if rng.random() < last_prob:
        return question + "\n" + templates.IMAGE_TOKEN
    return templates.IMAGE_TOKEN + "\n" + question


def _stage2_record(name: str, scene: dict, rng: np.random.Generator, cfg: WorldConfig, freq: dict) -> dict:
    # mostly multi-turn open questions: several supervised answers per image and step
    kind = _pick(rng, ["open"] * 3 + ["mc"] * 6 + ["pope"] * 2 + ["multi"] * 9)
    convs: list[dict] = []
    qtypes: list[str] = []
    if kind == "open":
        qt = _pick(rng, QUESTION_TYPES)
        q, a = open_question(scene, qt, rng, freq=freq)
        turns = [(q + "\n" + SHORT_ANSWER_SUFFIX, a, qt)]
    elif kind == "mc":
        qt = _pick(rng, QUESTION_TYPES)
        two = qt == "existence" and rng.random() < 0.5
        q, opts, ans = mc_question(scene, qt, rng, cfg, two_option=two, freq=freq)
        hint = _pick(rng, MC_HINTS) if rng.random() < 0.25 else None
        turns = [(format_mc_prompt(q, opts, hint), OPTION_LETTERS[ans], qt)]
    elif kind == "pope":
        want = "yes" if rng.random() < 0.5 else "no"
        if want == "yes":
            o = _pick(rng, scene["objects"])
            c, s = o["colour"], o["shape"]
        else:
            c, s = negative_objects(scene, rng, _pick(rng, ["random", "popular", "adversarial"]), 1, freq)[0]
        turns = [(f"Is there {_phrase(c, s)} in the image?\n{SHORT_ANSWER_SUFFIX}", want, "existence")]
    else:
        n = int(rng.integers(3, 6))
        types = [QUESTION_TYPES[int(i)] for i in rng.choice(len(QUESTION_TYPES), size=n, replace=False)]
        turns = []
        for qt in types:
            q, a = open_question(scene, qt, rng, freq=freq)
            turns.append((q + "\n" + SHORT_ANSWER_SUFFIX, a, qt))
    for t, (q, a, qt) in enumerate(turns):
        convs.append({"from": "human", "value": _human(q, rng, first=(t == 0))})
        convs.append({"from": "gpt", "value": a})
        qtypes.append(qt)
    return {"id": name, "image": f"{name}.png", "conversations": convs, "question_types": qtypes}


_OPPOSITE = {
    "top left": "bottom right", "top": "bottom", "top right": "bottom left",
    "left": "right", "right": "left",
    "bottom left": "top right", "bottom": "top", "bottom right": "top left",
}
_MIXES = [("red", "yellow", "orange"), ("blue", "yellow", "green"), ("red", "blue", "purple")]
_SIDES = {"triangle": "three", "square": "four", "diamond": "four"}


def _text_only_record(j: int, rng: np.random.Generator) -> dict:
    f = int(rng.integers(8))
    if f == 0:
        q, a, t = "Name a shape.", _pick(rng, SHAPES), "shape"
    elif f == 1:
        q, a, t = "Name a colour.", _pick(rng, COLOUR_NAMES), "colour"
    elif f == 2:
        s = _pick(rng, list(_SIDES))
        q, a, t = f"How many sides does {_article(s)} {s} have?", _SIDES[s], "count"
    elif f == 3:
        x, y, z = _pick(rng, _MIXES)
        if rng.random() < 0.5:
            x, y = y, x
        q, a, t = f"What colour do you get if you mix {x} and {y}?", z, "colour"
    elif f == 4:
        w = _pick(rng, SHAPES + COLOUR_NAMES)
        q, a = f"Is {w} a colour or a shape?", ("a shape" if w in SHAPES else "a colour")
        t = "shape" if w in SHAPES else "colour"
    elif f == 5:
        p = _pick(rng, list(_OPPOSITE))
        q, a, t = f"What is the opposite of {p}?", _OPPOSITE[p], "position"
    elif f == 6:
        w = _pick(rng, SHAPES + COLOUR_NAMES)
        q, a, t = f"Is {w} a colour?", ("yes" if w in COLOURS else "no"), "existence"
    else:
        k = int(rng.integers(0, 9))
        q, a, t = f"What number comes after {NUMBER_WORDS[k]}?", NUMBER_WORDS[k + 1], "count"
    if rng.random() < 0.5:
        q = q + "\n" + SHORT_ANSWER_SUFFIX
    return {"id": f"text_{j:05d}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
            "question_types": [t]}


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------

def _dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def _dump_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _make_images(split: str, n: int, stream: int, cfg: WorldConfig, images_dir: Path,
                 forbidden: set[bytes]) -> tuple[list[dict], list[bytes], set[bytes]]:
    scenes, pngs, hashes = [], [], set()
    for i in range(n):
        rng = _rng(cfg.seed, stream, i)
        for _attempt in range(100):
            scene = sample_scene(rng, cfg)
            arr = render_scene(scene, rng, cfg)
            h = hashlib.sha1(arr.tobytes()).digest()
            if h not in forbidden and h not in hashes:
                break
        else:  # pragma: no cover - only with absurdly small worlds
            raise RuntimeError(f"could not draw a unique {split} image #{i}")
        hashes.add(h)
        png = _png_bytes(arr)
        (images_dir / f"{split}_{i:05d}.png").write_bytes(png)
        scenes.append(scene)
        pngs.append(png)
    return scenes, pngs, hashes


def generate_world(out_dir: str | os.PathLike, config: WorldConfig | None = None) -> WorldPaths:
    """Generate the tiny world into ``out_dir`` (overwriting its files). Deterministic in config."""
    cfg = config or WorldConfig()
    paths = WorldPaths.at(out_dir)
    paths.images.mkdir(parents=True, exist_ok=True)
    for p in paths.data_files():
        p.parent.mkdir(parents=True, exist_ok=True)

    train_scenes, _, train_hashes = _make_images("train", cfg.n_train, _S_TRAIN_SCENE, cfg, paths.images, set())
    val_scenes, val_pngs, _ = _make_images("val", cfg.n_val, _S_VAL_SCENE, cfg, paths.images, train_hashes)

    freq_counter = Counter((o["colour"], o["shape"]) for s in train_scenes for o in s["objects"])
    freq = {(c, s): freq_counter.get((c, s), 0) for c in COLOUR_NAMES for s in SHAPES}

    # ---- training stages
    stage1, stage15, stage2 = [], [], []
    for i, scene in enumerate(train_scenes):
        name = f"train_{i:05d}"
        rng = _rng(cfg.seed, _S_TRAIN_TEXT, i)
        stage1.append({"id": name, "image": f"{name}.png", "conversations": [
            {"from": "human", "value": templates.IMAGE_TOKEN},
            {"from": "gpt", "value": short_caption(scene)}]})
        stage15.append({"id": name, "image": f"{name}.png", "conversations": [
            {"from": "human", "value": _human(_pick(rng, DETAIL_PROMPTS), rng, first=True, last_prob=0.5)},
            {"from": "gpt", "value": detailed_caption(scene)}]})
        stage2.append(_stage2_record(name, scene, rng, cfg, freq))
    frac = min(max(cfg.text_only_frac, 0.0), 0.9)
    n_text = int(round(cfg.n_train * frac / (1.0 - frac)))
    rng_t = _rng(cfg.seed, _S_TEXT_ONLY)
    text_records = [_text_only_record(j, rng_t) for j in range(n_text)]
    # interleave text-only records at deterministic random places
    slots = sorted(int(x) for x in rng_t.choice(len(stage2) + n_text, size=n_text, replace=False)) if n_text else []
    merged, it_img, it_txt = [], iter(stage2), iter(text_records)
    slot_set = set(slots)
    for k in range(len(stage2) + n_text):
        merged.append(next(it_txt) if k in slot_set else next(it_img))
    stage2 = merged

    # ---- held-out open questions: types cycle, existence answers alternate yes/no
    qa = []
    n_exist = 0
    for i, scene in enumerate(val_scenes):
        rng = _rng(cfg.seed, _S_VAL_QA, i)
        for r in range(cfg.val_qa_per_image):
            j = i * cfg.val_qa_per_image + r
            qt = QUESTION_TYPES[j % len(QUESTION_TYPES)]
            want = None
            if qt == "existence":
                want = "yes" if n_exist % 2 == 0 else "no"
                n_exist += 1
            q, a = open_question(scene, qt, rng, want=want, freq=freq)
            qa.append({"id": f"val_qa_{j:05d}", "image": f"val_{i:05d}.png", "question": q, "answer": a,
                       "question_type": qt, "prompt": q + "\n" + SHORT_ANSWER_SUFFIX})

    # ---- MMBench TSV: one MC question per val image, types cycle (shifted vs qa.json)
    mm_rows: list[dict] = []
    n_exist = 0
    for i, scene in enumerate(val_scenes):
        rng = _rng(cfg.seed, _S_VAL_MC, i)
        qt = QUESTION_TYPES[(i + 2) % len(QUESTION_TYPES)]
        want, two = None, False
        if qt == "existence":
            two = n_exist % 2 == 1
            want = "yes" if (n_exist // 2) % 2 == 0 else "no"
            n_exist += 1
        q, opts, ans = mc_question(scene, qt, rng, cfg, want=want, two_option=two, freq=freq)
        hint = _pick(rng, MC_HINTS) if rng.random() < 0.25 else ""
        row = {"index": i, "question": q, "hint": hint}
        for k, letter in enumerate(OPTION_LETTERS):
            row[letter] = opts[k] if k < len(opts) else ""
        row.update({"answer": OPTION_LETTERS[ans], "category": qt, "l2-category": MMBENCH_L2[qt],
                    "image": base64.b64encode(val_pngs[i]).decode("ascii"), "split": "dev"})
        mm_rows.append(row)
    circular = []
    for k in (1, 2, 3):
        for row in mm_rows:
            if row["D"] == "":
                continue
            opts = [row[x] for x in OPTION_LETTERS]
            rot = opts[k:] + opts[:k]
            new = dict(row)
            new["index"] = row["index"] + k * CIRCULAR_OFFSET
            for letter, o in zip(OPTION_LETTERS, rot):
                new[letter] = o
            new["answer"] = OPTION_LETTERS[rot.index(row[row["answer"]])]
            circular.append(new)
    with open(paths.mmbench, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MMBENCH_COLUMNS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(mm_rows + circular)

    # ---- POPE: per val image, every present object (yes) + as many absent ones (no)
    pope: dict[str, list[dict]] = {k: [] for k in POPE_KINDS}
    for kind_i, kind in enumerate(POPE_KINDS):
        qid = 1
        for i, scene in enumerate(val_scenes):
            rng = _rng(cfg.seed, _S_VAL_POPE * 10 + kind_i, i)
            pos = [(o["colour"], o["shape"]) for o in scene["objects"]]
            neg = negative_objects(scene, rng, kind, len(pos), freq)
            items = [x for pair in zip([(p, "yes") for p in pos], [(p, "no") for p in neg]) for x in pair]
            for p, label in items:
                pope[kind].append({"question_id": qid, "image": f"val_{i:05d}.png",
                                   "text": f"Is there {_phrase(*p)} in the image?", "label": label})
                qid += 1
    for kind in POPE_KINDS:
        _dump_jsonl(paths.pope[kind], pope[kind])

    _dump_json(paths.stage1, stage1)
    _dump_json(paths.stage15, stage15)
    _dump_json(paths.stage2, stage2)
    _dump_json(paths.val_qa, qa)
    # the same open questions in LLaVA's GQA jsonl layout, scored by the GQA reader (exact match)
    _dump_jsonl(paths.gqa, [{"question_id": r["id"], "image": r["image"], "text": r["question"],
                             "answer": r["answer"], "category": r["question_type"]} for r in qa])
    scenes = {f"train_{i:05d}.png": s for i, s in enumerate(train_scenes)}
    scenes.update({f"val_{i:05d}.png": s for i, s in enumerate(val_scenes)})
    _dump_json(paths.scenes, scenes)

    root = paths.root
    meta = {
        "name": "victor-tiny-world",
        "version": 1,
        "config": asdict(cfg),
        "counts": {
            "train_images": cfg.n_train, "val_images": cfg.n_val,
            "stage1": len(stage1), "stage15": len(stage15), "stage2": len(stage2),
            "stage2_text_only": n_text, "val_qa": len(qa),
            "val_qa_by_type": dict(Counter(r["question_type"] for r in qa)),
            "mmbench_questions": len(mm_rows), "mmbench_rows": len(mm_rows) + len(circular),
            **{f"pope_{k}": len(v) for k, v in pope.items()},
        },
        "vocab": {
            "colours": COLOUR_NAMES, "colour_rgb": {k: list(v) for k, v in COLOURS.items()},
            "shapes": SHAPES, "sizes": SIZES, "positions": POSITIONS, "numbers": NUMBER_WORDS,
            "question_types": QUESTION_TYPES,
        },
        "object_frequency": {f"{c} {s}": n for (c, s), n in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))},
        "prompts": {"short_answer_suffix": SHORT_ANSWER_SUFFIX, "mc_suffix": MC_SUFFIX,
                    "detail_prompts": DETAIL_PROMPTS},
        "files": {
            "images": paths.images.relative_to(root).as_posix(),
            "stage1": paths.stage1.relative_to(root).as_posix(),
            "stage15": paths.stage15.relative_to(root).as_posix(),
            "stage2": paths.stage2.relative_to(root).as_posix(),
            "val_qa": paths.val_qa.relative_to(root).as_posix(),
            "mmbench": paths.mmbench.relative_to(root).as_posix(),
            "pope": {k: v.relative_to(root).as_posix() for k, v in paths.pope.items()},
            "scenes": paths.scenes.relative_to(root).as_posix(),
        },
    }
    _dump_json(paths.meta, meta)
    return paths


def ensure_world(out_dir: str | os.PathLike, config: WorldConfig | None = None) -> WorldPaths:
    """Generate the world unless ``out_dir/meta.json`` already records the same config."""
    cfg = config or WorldConfig()
    paths = WorldPaths.at(out_dir)
    try:
        with open(paths.meta, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("config") == asdict(cfg) and all(p.exists() for p in paths.data_files()):
            return paths
    except (OSError, ValueError):
        pass
    return generate_world(out_dir, cfg)


def load_scenes(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Ground-truth scenes keyed by image file name."""
    with open(WorldPaths.at(out_dir).scenes, encoding="utf-8") as f:
        return json.load(f)


def world_texts(out_dir: str | os.PathLike) -> Iterator[str]:
    """Every string of the world: conversation turns, questions, answers, options, hints."""
    paths = WorldPaths.at(out_dir)
    for p in (paths.stage1, paths.stage15, paths.stage2):
        with open(p, encoding="utf-8") as f:
            for rec in json.load(f):
                for turn in rec["conversations"]:
                    yield turn["value"]
    with open(paths.val_qa, encoding="utf-8") as f:
        for rec in json.load(f):
            yield rec["question"]
            yield rec["answer"]
            yield rec["prompt"]
    with open(paths.mmbench, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            for k in ("question", "hint", "A", "B", "C", "D", "answer"):
                if row[k]:
                    yield row[k]
            opts = [row[x] for x in OPTION_LETTERS if row[x]]
            yield format_mc_prompt(row["question"], opts, row["hint"] or None)
    for p in paths.pope.values():
        with open(p, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                yield rec["text"]
                yield rec["label"]


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

def build_tokenizer(texts: Iterable[str], save_dir: str | os.PathLike | None = None):
    """Word-level tokenizer (lowercased; whitespace + isolated punctuation) trained offline.

    Special tokens (ids 0-4): <pad> <unk> <s> </s> <image>. Encoding prepends <s> (like Llama);
    pass ``add_special_tokens=False`` to avoid it. Decoding joins words with spaces, glues
    punctuation and <image> to the preceding text.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    def corpus() -> Iterator[str]:
        for t in texts:
            for sp in SPECIAL_TOKENS:
                t = t.replace(sp, " ")
            yield t
        yield templates.TEMPLATE_TEXT
        yield " ".join("abcd") + " " + " ".join("0123456789")
        yield " ".join(COLOUR_NAMES + SHAPES + list(SHAPE_PLURALS.values()) + SIZES + POSITIONS + NUMBER_WORDS)
        yield SHORT_ANSWER_SUFFIX + " " + MC_SUFFIX + " yes no"

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    trainer = trainers.WordLevelTrainer(vocab_size=1_000_000, min_frequency=0, special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)])
    mark = "\u2581"
    tok.decoder = decoders.Sequence(
        [decoders.Replace(Regex("^"), mark), decoders.Replace(mark + templates.IMAGE_TOKEN, templates.IMAGE_TOKEN)]
        + [decoders.Replace(mark + p, p) for p in ".,?!:;"]
        + [decoders.Metaspace(replacement=mark, prepend_scheme="always", split=False)])

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=1024, padding_side="right", clean_up_tokenization_spaces=False,
    )
    hf.chat_template = templates.VICUNA_CHAT_TEMPLATE
    if save_dir is not None:
        hf.save_pretrained(str(save_dir))
    return hf


__all__ = [
    "WorldConfig", "WorldPaths", "generate_world", "ensure_world", "load_scenes", "world_texts",
    "build_tokenizer",
    "sample_scene", "render_scene", "short_caption", "detailed_caption", "open_question", "mc_question",
    "format_mc_prompt", "negative_objects", "COLOURS", "COLOUR_NAMES", "SHAPES", "SIZES", "POSITIONS",
    "NUMBER_WORDS", "QUESTION_TYPES", "SHORT_ANSWER_SUFFIX", "MC_SUFFIX", "MMBENCH_COLUMNS", "SPECIAL_TOKENS",
]
