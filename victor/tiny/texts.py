"""The tiny world's texts: captions, open and multiple-choice questions, stage-2 conversations."""
from __future__ import annotations

from collections import Counter

import numpy as np

from victor.data.templates import IMAGE_TOKEN
from victor.eval.prompts import OPTION_LETTERS, SHORT_ANSWER_SUFFIX, format_mc_prompt
from victor.tiny.scenes import (
    COLOUR_NAMES,
    COLOURS,
    MC_HINTS,
    NUMBER_WORDS,
    POSITIONS,
    QUESTION_TYPES,
    SHAPE_PLURALS,
    SHAPES,
    SIZES,
    WorldConfig,
)


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


def size_question(obj: dict, rng: np.random.Generator) -> tuple[str, str, list[str]]:
    """ "Is the red circle small or large?" (choices in either order), its answer and the two choices."""
    order = _pick(rng, ["small or large", "large or small"])
    return f"Is the {obj['colour']} {obj['shape']} {order}?", obj["size"], list(SIZES)


def fine_question(scene: dict, ftype: str, rng: np.random.Generator,
                  want: str | None = None) -> tuple[str, str, list[str]] | None:
    """One held-out fine-detail question (type in `FINE_TYPES`), its answer and the two choices a
    model's likelihood picks from, or None when the scene cannot pose it (with ``want``: so that
    the answer is ``want``). Each needs a detail stage-1 captions never state (they name colours
    and shapes only) and both choices are plausible without it:

    * size: "Is the red circle small or large?" -> small / large (the object named by colour and
      shape, so the model has to find it among the image's objects and read its size).

    Relative position ("Is the red circle left or right of the blue square?") and colour at a
    named position were tried and left out: the tiny LLM reading the ground-truth scene slots
    (`victor.tiny.pretrain.SceneReader`) answers them at chance (48% and 58% after 1000
    pretraining steps, against 80% for size), so they measure the tiny LLM, not stage 1.5.
    """
    if ftype == "size":
        pool = [o for o in scene["objects"] if want is None or o["size"] == want]
        return size_question(pool[int(rng.integers(len(pool)))], rng) if pool else None
    raise ValueError(ftype)


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
        return question + "\n" + IMAGE_TOKEN
    return IMAGE_TOKEN + "\n" + question


def _stage2_record(name: str, scene: dict, rng: np.random.Generator, cfg: WorldConfig, freq: dict) -> dict:
    # mostly multi-turn open questions: several supervised answers per image and step
    kind = _pick(rng, ["open"] * 3 + ["mc"] * 6 + ["pope"] * 2 + ["multi"] * 9 + ["fine"] * 8)
    convs: list[dict] = []
    qtypes: list[str] = []
    if kind == "fine":  # the size of every object, in a random order
        turns = [(q + "\n" + SHORT_ANSWER_SUFFIX, a, "size") for q, a, _ in
                 (size_question(scene["objects"][int(i)], rng) for i in rng.permutation(len(scene["objects"])))]
    elif kind == "open":
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


