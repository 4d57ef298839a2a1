"""The tiny world: a procedurally generated multimodal data set that runs on a laptop CPU.

Images are small (64x64 by default) scenes of 1-3 coloured shapes placed in a 3x3 grid of
regions on a cluttered background (noise / gradient plus thin distractor marks in muted
colours). Every image comes with the texts of all training stages and the held-out
benchmarks, written in the standard LLaVA / MMBench / POPE layouts so that the loaders and
evaluators that serve real data serve the tiny world unchanged:

    out_dir/images/{train|val}_{i:05d}.png
    out_dir/train/stage1.json      short captions            (LLaVA conversation JSON)
    out_dir/train/stage15.json     detailed captions         (LLaVA conversation JSON)
    out_dir/train/stage2.json      instructions, multi-turn (some asking every object's size), ~5% text-only
    out_dir/val/qa.json            open questions, balanced over the 5 question types
    out_dir/val/mmbench.tsv        multiple choice, MMBench TSV layout with circular copies
    out_dir/val/pope/coco_pope_{random,popular,adversarial}.json   POPE JSONL layout
    out_dir/val/fine.jsonl         fine-detail questions with two choices each (GQA JSONL + choices)
    out_dir/scenes.json            ground-truth scene of every image (objects, background)
    out_dir/meta.json              config, counts, vocabulary, file list

Everything is deterministic given ``WorldConfig.seed`` (byte-identical files), pure Pillow +
numpy. Scenes are sampled and drawn in `scenes.py`, their texts written in `texts.py`; this
module writes the files and builds the world's word-level tokenizer.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from victor.data.templates import IMAGE_TOKEN, TEMPLATE_TEXT, VICUNA_CHAT_TEMPLATE
from victor.eval.prompts import (
    CIRCULAR_OFFSET,
    MC_SUFFIX,
    MMBENCH_COLUMNS,
    MMBENCH_OPTIONS,
    SHORT_ANSWER_SUFFIX,
    circular_copy,
    format_mc_prompt,
)
from victor.tiny.scenes import (
    _S_TEXT_ONLY,
    _S_TRAIN_SCENE,
    _S_TRAIN_TEXT,
    _S_VAL_FINE,
    _S_VAL_MC,
    _S_VAL_POPE,
    _S_VAL_QA,
    _S_VAL_SCENE,
    BOS,
    BOS_ID,
    COLOUR_NAMES,
    COLOURS,
    DETAIL_PROMPTS,
    EOS,
    FINE_TYPES,
    MC_HINTS,
    MMBENCH_L2,
    NUMBER_WORDS,
    PAD,
    POPE_KINDS,
    POSITIONS,
    QUESTION_TYPES,
    SHAPE_PLURALS,
    SHAPES,
    SIZES,
    SPECIAL_TOKENS,
    UNK,
    WorldConfig,
    _png_bytes,
    _rng,
    render_scene,
    sample_scene,
)
from victor.tiny.texts import (
    _human,
    _phrase,
    _pick,
    _stage2_record,
    _text_only_record,
    detailed_caption,
    fine_question,
    mc_question,
    negative_objects,
    open_question,
    short_caption,
)

# bump when generate_world writes different files for the same config (ensure_world then rebuilds);
# 2: val/fine.jsonl (every earlier file unchanged, byte for byte); 3: stage 2 also asks the size of
# every object of some images ("Is the red circle small or large?", the fine-detail questions' kind)
WORLD_VERSION = 3


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
    fine: Path
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
            fine=root / "val" / "fine.jsonl",
            pope={k: root / "val" / "pope" / f"coco_pope_{k}.json" for k in POPE_KINDS},
            scenes=root / "scenes.json",
            meta=root / "meta.json",
        )

    def data_files(self) -> list[Path]:
        return [self.stage1, self.stage15, self.stage2, self.val_qa, self.mmbench, self.gqa, self.fine,
                *self.pope.values(), self.scenes, self.meta]



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
            {"from": "human", "value": IMAGE_TOKEN},
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
        for k, letter in enumerate(MMBENCH_OPTIONS):
            row[letter] = opts[k] if k < len(opts) else ""
        row.update({"answer": MMBENCH_OPTIONS[ans], "category": qt, "l2-category": MMBENCH_L2[qt],
                    "image": base64.b64encode(val_pngs[i]).decode("ascii"), "split": "dev"})
        mm_rows.append(row)
    circular = []
    for k in (1, 2, 3):
        for row in mm_rows:
            if row["D"] == "":
                continue
            options, answer = circular_copy({x: row[x] for x in MMBENCH_OPTIONS}, row["answer"], k)
            circular.append({**row, **options, "index": row["index"] + k * CIRCULAR_OFFSET, "answer": answer})
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

    # ---- fine-detail questions: one per image and type, the answer given less often so far asked first
    # (a scene without an object of that size poses the other), so small and large stay balanced
    fine: list[dict] = []
    answered: Counter = Counter()
    for i, scene in enumerate(val_scenes):
        rng = _rng(cfg.seed, _S_VAL_FINE, i)
        for ft in FINE_TYPES:
            wants = sorted(SIZES, key=lambda a: answered[ft, a])
            q, a, choices = next(g for g in (fine_question(scene, ft, rng, want=w) for w in wants) if g)
            answered[ft, a] += 1
            fine.append({"question_id": f"val_fine_{len(fine):05d}", "image": f"val_{i:05d}.png", "text": q,
                         "answer": a, "category": ft, "choices": choices})
    _dump_jsonl(paths.fine, fine)

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
        "version": WORLD_VERSION,
        "config": asdict(cfg),
        "counts": {
            "train_images": cfg.n_train, "val_images": cfg.n_val,
            "stage1": len(stage1), "stage15": len(stage15), "stage2": len(stage2),
            "stage2_text_only": n_text, "val_qa": len(qa),
            "val_qa_by_type": dict(Counter(r["question_type"] for r in qa)),
            "mmbench_questions": len(mm_rows), "mmbench_rows": len(mm_rows) + len(circular),
            "val_fine": len(fine), "val_fine_by_type": dict(Counter(r["category"] for r in fine)),
            **{f"pope_{k}": len(v) for k, v in pope.items()},
        },
        "vocab": {
            "colours": COLOUR_NAMES, "colour_rgb": {k: list(v) for k, v in COLOURS.items()},
            "shapes": SHAPES, "sizes": SIZES, "positions": POSITIONS, "numbers": NUMBER_WORDS,
            "question_types": QUESTION_TYPES, "fine_types": FINE_TYPES,
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
            "fine": paths.fine.relative_to(root).as_posix(),
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
        if meta.get("config") == asdict(cfg) and meta.get("version") == WORLD_VERSION and \
                all(p.exists() for p in paths.data_files()):
            return paths
    except (OSError, ValueError):
        pass
    return generate_world(out_dir, cfg)


def load_scenes(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Ground-truth scenes keyed by image file name."""
    with open(WorldPaths.at(out_dir).scenes, encoding="utf-8") as f:
        return json.load(f)


def world_texts(out_dir: str | os.PathLike) -> Iterator[str]:
    """Every string of the world: conversation turns, questions, answers, options, hints.

    The held-out fine-detail questions (`val/fine.jsonl`) are left out: stage 2 asks the same
    kind of question about the training images, so their words are training words (a test checks)."""
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
            opts = [row[x] for x in MMBENCH_OPTIONS if row[x]]
            yield format_mc_prompt(row["question"], opts, row["hint"] or None)
    for p in paths.pope.values():
        with open(p, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                yield rec["text"]
                yield rec["label"]



def build_tokenizer(texts: Iterable[str], save_dir: str | os.PathLike | None = None):
    """Word-level tokenizer (lowercased; whitespace + isolated punctuation) trained offline.

    Special tokens (ids 0-4): <pad> <unk> <s> </s> <image>. Encoding prepends <s> (like Llama);
    pass ``add_special_tokens=False`` to avoid it. Decoding joins words with spaces, glues
    punctuation and <image> to the preceding text.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    def corpus() -> Iterator[str]:
        for t in texts:
            for sp in SPECIAL_TOKENS:
                t = t.replace(sp, " ")
            yield t
        yield TEMPLATE_TEXT
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
        [decoders.Replace(Regex("^"), mark), decoders.Replace(mark + IMAGE_TOKEN, IMAGE_TOKEN)]
        + [decoders.Replace(mark + p, p) for p in ".,?!:;"]
        + [decoders.Metaspace(replacement=mark, prepend_scheme="always", split=False)])

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=1024, padding_side="right", clean_up_tokenization_spaces=False,
    )
    hf.chat_template = VICUNA_CHAT_TEMPLATE
    if save_dir is not None:
        hf.save_pretrained(str(save_dir))
    return hf


__all__ = [
    "WORLD_VERSION", "WorldConfig", "WorldPaths", "generate_world", "ensure_world", "load_scenes", "world_texts",
    "build_tokenizer",
    "sample_scene", "render_scene", "short_caption", "detailed_caption", "open_question", "mc_question",
    "fine_question",
    "format_mc_prompt", "negative_objects", "COLOURS", "COLOUR_NAMES", "SHAPES", "SIZES", "POSITIONS",
    "NUMBER_WORDS", "QUESTION_TYPES", "FINE_TYPES", "SHORT_ANSWER_SUFFIX", "MC_SUFFIX", "MMBENCH_COLUMNS", "SPECIAL_TOKENS",
]
