"""The authors' released checkpoints (LLaVA-fork layout) -> a victor checkpoint stock tools load.

Two source layouts share one key scheme (LLaVA-1.5's original code and its Croc/ViCToR fork):

* `croc_llama` (Croc / ViCToR, e.g. DeepGlint-AI/LLaVA-v1.5-Croc-7b): `model.embed_tokens`,
  `model.layers.*`, `model.norm`, `lm_head`, the projector `model.mm_projector.{0,2}.*`
  (`mlp2x_gelu`), the visual token pool `model.mask_token` [pool, hidden], an unused
  `model.cross_attention.*` and, where saved, the reconstruction head `transform_block.*`.
  Projector outputs are L2-normalised in every stage, so it becomes our `victor_llava`.
* `llava_llama` (LLaVA-1.5): the same keys without pool, head and cross-attention, not
  normalised, so it becomes the stock `llava` type.

The vision tower is not stored: `mm_vision_tower` names it (hub id or directory; `vision=`
overrides), `mm_vision_select_layer` picks the hidden state and `mm_vision_select_feature`
`patch` drops the CLS token. `image_aspect_ratio: pad` becomes transformers'
`LlavaImageProcessor(do_pad=True)` (pad to a square with the mean colour, then resize).
The tokenizer gains `<image>` (its embedding row and lm_head row are the mean of the others,
so it never wins an argmax; generation also suppresses it) and the chat template (Vicuna v1).
The pool, and the released head under `croc_head.*`, go to `comprehension.safetensors`.
Every source key must match a rule below; any other key stops the conversion and is named.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from victor.data.templates import IMAGE_TOKEN
from victor.model.assemble import (
    _vision_config,
    count_visual_tokens,
    load_vision_tower,
    prepare_tokenizer,
    with_aspect_ratio,
)
from victor.model.normalized import (
    VictorLlavaConfig,
    VictorLlavaForConditionalGeneration,
)
from victor.model.comprehension_state import STATE_FILE, save_state

# model_type -> (the LLM's model_type, projector outputs L2-normalised, what it is)
RELEASED_TYPES = {
    "croc_llama": ("llama", True, "Croc / ViCToR (deepglint/Croc)"),
    "llava_llama": ("llama", False, "LLaVA-1.5 (haotian-liu/LLaVA)"),
}
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
# config.json fields of the LLaVA fork that describe the multimodal wrapper, not the LLM
WRAPPER_FIELDS = {
    "architectures", "model_type", "auto_map", "_name_or_path", "transformers_version", "use_mm_proj",
    "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side",
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower", "croc_stage", "mm_projector_lr",
    "mm_vision_tower_lr", "use_cache", "vision_tower",
}
# source key -> target; the target is a LLaVA key, `pool`, `head:<name>` or `drop:<why>`
RULES = [
    (r"model\.embed_tokens\.(.+)", r"model.language_model.embed_tokens.\1"),
    (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", "drop:rotary frequencies (recomputed from the config)"),
    (r"model\.layers\.(.+)", r"model.language_model.layers.\1"),
    (r"model\.norm\.(.+)", r"model.language_model.norm.\1"),
    (r"lm_head\.(.+)", r"lm_head.\1"),
    (r"model\.mm_projector\.0\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),
    (r"model\.mm_projector\.2\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1"),
    (r"model\.vision_tower\.vision_tower\.vision_model\.(.+)", r"model.vision_tower.\1"),
    (r"model\.mask_token", "pool"),
    (r"model\.cross_attention\..+", "drop:Croc's cross_attention module (built, never used in its forward)"),
    (r"transform_block\.(.+)", r"head:\1"),
]


class ConversionError(ValueError):
    """The source is not a checkpoint this converter knows; the message names what is wrong."""


def target_of(key: str) -> str | None:
    for pattern, target in RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    return None


def weight_files(src: Path, allow_pickle: bool) -> list[Path]:
    """The weight files of a released checkpoint: sharded (index json) or single, safetensors or .bin."""
    for index, pickled in (("model.safetensors.index.json", False), ("pytorch_model.bin.index.json", True)):
        if (src / index).is_file():
            files = [src / f for f in sorted(set(json.loads((src / index).read_text())["weight_map"].values()))]
            break
    else:
        files = sorted(src.glob("*.safetensors")) or sorted(src.glob("pytorch_model*.bin"))
    if not files:
        raise ConversionError(f"{src}: no model.safetensors, pytorch_model.bin or sharded index")
    pickled = [f for f in files if f.suffix == ".bin"]
    if pickled and not allow_pickle:
        raise ConversionError(
            f"{src}: the weights are pickle files ({pickled[0].name}); unpickling can run code. Pass "
            "--allow-pickle to read them (with torch.load(weights_only=True), which refuses anything but tensors)")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ConversionError(f"{src}: the index names shards that are not there: {missing[:3]}")
    return files


def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
        else:
            tensors.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    return tensors


def split_released(tensors: dict[str, torch.Tensor]) -> tuple[dict, torch.Tensor | None, dict, dict[str, list[str]]]:
    """Released keys -> (LLaVA tensors, pool or None, head tensors, dropped keys by reason)."""
    llava, head, dropped, unknown, pool = {}, {}, {}, [], None
    for key, tensor in tensors.items():
        target = target_of(key)
        if target is None:
            unknown.append(key)
        elif target == "pool":
            pool = tensor
        elif target.startswith("head:"):
            head[target[5:]] = tensor
        elif target.startswith("drop:"):
            dropped.setdefault(target[5:], []).append(key)
        else:
            llava[target] = tensor
    if unknown:
        raise ConversionError(
            f"{len(unknown)} tensor(s) the mapping does not know: {', '.join(sorted(unknown)[:10])}"
            f"{' ...' if len(unknown) > 10 else ''}. Known: " + "; ".join(p for p, _ in RULES))
    return llava, pool, head, dropped


def check_config(config: dict) -> tuple[str, bool, str]:
    """(LLM model_type, normalised, description) of a released config, or why it cannot be converted."""
    kind = config.get("model_type")
    if kind not in RELEASED_TYPES:
        raise ConversionError(f"model_type {kind!r}: convert knows {', '.join(RELEASED_TYPES)} (the LLaVA-1.5 "
                              "layout); a checkpoint already in transformers' llava layout needs no conversion")
    checks = [
        (config.get("mm_projector_type", "linear") == "mlp2x_gelu", "mm_projector_type",
         "only mlp2x_gelu (LLaVA-1.5's 2-layer GELU MLP) has a stock LLaVA counterpart"),
        (config.get("mm_vision_select_feature", "patch") in SELECT_FEATURE, "mm_vision_select_feature",
         f"choose {' or '.join(SELECT_FEATURE)}"),
        (config.get("image_aspect_ratio") in (None, "pad", "square"), "image_aspect_ratio",
         "only pad and square (anyres is LLaVA-NeXT's tiling)"),
        (config.get("mm_patch_merge_type", "flat") == "flat", "mm_patch_merge_type", "only flat"),
        (not config.get("mm_use_im_start_end", False), "mm_use_im_start_end", "image start/end tokens"),
    ]
    for ok, field, why in checks:
        if not ok:
            raise ConversionError(f"config {field}={config.get(field)!r} is not supported: {why}")
    return RELEASED_TYPES[kind]


def released_dir(src: str, allow_pickle: bool) -> Path:
    """`src` itself if it is a directory, else the hub snapshot of the repo it names (config, weights, tokenizer)."""
    if Path(src).is_dir() or src.startswith((".", "/", "~")) or src.count("/") != 1:
        return Path(src)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"] + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(src, allow_patterns=patterns))
    except Exception as err:  # offline, no such repo, gated: say which
        raise ConversionError(f"{src}: not a directory, and the hub download failed ({type(err).__name__}: "
                              f"{err})") from None


def _with_image_row(weight: torch.Tensor) -> torch.Tensor:
    """One more row for `<image>`: the mean of the others (its logit is the mean logit, never the maximum)."""
    return torch.cat([weight, weight.float().mean(dim=0, keepdim=True).to(weight.dtype)])


def convert(src, output, *, vision: str | None = None, tokenizer: str | None = None,
            chat_template: str = "vicuna", allow_pickle: bool = False, dtype: torch.dtype | None = None) -> dict:
    """Convert the released checkpoint `src` (a directory or hub id) into `output`; returns what was done."""
    src, output = released_dir(str(src), allow_pickle), Path(output)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src}: no config.json (a released checkpoint is a directory)")
    if output.exists() and any(output.iterdir()):
        raise ConversionError(f"{output} exists and is not empty")
    config = json.loads((src / "config.json").read_text())
    llm_type, normalized, family = check_config(config)
    llava_tensors, pool, head, dropped = split_released(read_tensors(weight_files(src, allow_pickle)))
    if dtype is None:
        dtype = llava_tensors["lm_head.weight"].dtype if "lm_head.weight" in llava_tensors else torch.float32

    vision = vision or config.get("mm_vision_tower") or config.get("vision_tower")
    if not vision:
        raise ConversionError("the config names no vision tower (mm_vision_tower); pass --vision")
    if vision.startswith("/") and not Path(vision).exists():
        raise ConversionError(f"the config names the vision tower {vision!r}, a path that does not exist here "
                              "(the authors' machine); pass --vision with a hub id or directory")
    vision_config = _vision_config(vision)
    if config.get("mm_hidden_size", vision_config.hidden_size) != vision_config.hidden_size:
        raise ConversionError(f"mm_hidden_size={config['mm_hidden_size']} but the vision tower {vision} has "
                              f"hidden size {vision_config.hidden_size}: not the encoder this model was trained with")
    stored_tower = any(k.startswith("model.vision_tower.") for k in llava_tensors)
    tower = load_vision_tower(vision, dtype=torch.float32)
    if not stored_tower:
        llava_tensors.update({f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()})

    aspect = "pad" if config.get("image_aspect_ratio") == "pad" else None
    image_processor = with_aspect_ratio(AutoImageProcessor.from_pretrained(vision), aspect)
    layer = config.get("mm_vision_select_layer", -1)
    strategy = SELECT_FEATURE[config.get("mm_vision_select_feature", "patch")]
    n_visual, extra = count_visual_tokens(tower, image_processor, layer, strategy)
    del tower

    # the LLM's config type, so that the tokenizer does not look `croc_llama` up among transformers' types
    tok = AutoTokenizer.from_pretrained(tokenizer or str(src), config=AutoConfig.for_model(llm_type))
    if config.get("tokenizer_model_max_length"):
        tok.model_max_length = config["tokenizer_model_max_length"]
    n_vocab = llava_tensors["model.language_model.embed_tokens.weight"].shape[0]
    tok = prepare_tokenizer(tok, chat_template)
    added = len(tok) - n_vocab
    if added not in (0, 1):
        raise ConversionError(f"the tokenizer has {len(tok)} tokens with {IMAGE_TOKEN}, the embeddings {n_vocab} rows")
    if added:
        for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            llava_tensors[key] = _with_image_row(llava_tensors[key])

    text_fields = {k: v for k, v in config.items() if k not in WRAPPER_FIELDS and not k.startswith("mm_")
                   and not (k == "rope_scaling" and v is None)}
    text_config = AutoConfig.for_model(llm_type, **{**text_fields, "vocab_size": n_vocab + added,
                                                     "pad_token_id": tok.pad_token_id})
    config_cls, model_cls = ((VictorLlavaConfig, VictorLlavaForConditionalGeneration) if normalized
                             else (LlavaConfig, LlavaForConditionalGeneration))
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    llava_config = config_cls(
        vision_config=vision_config, text_config=text_config, image_token_id=image_token_id,
        image_seq_length=n_visual, projector_hidden_act="gelu", vision_feature_layer=layer,
        vision_feature_select_strategy=strategy, tie_word_embeddings=text_config.tie_word_embeddings)
    with torch.device("meta"):  # no second copy of the weights: the tensors are assigned below
        model = model_cls(llava_config)
    _check_keys(model, llava_tensors)
    model.load_state_dict({k: v.to(dtype) for k, v in llava_tensors.items()}, strict=True, assign=True)
    model.config.dtype = dtype
    model.generation_config.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                   bos_token_id=tok.bos_token_id, suppress_tokens=[image_token_id])
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok,
                               patch_size=vision_config.patch_size, vision_feature_select_strategy=strategy,
                               chat_template=tok.chat_template, num_additional_image_tokens=extra)

    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    notes = [f"{k}: {len(v)} tensor(s) dropped ({v[0]}, ...)" for k, v in dropped.items()]
    if pool is not None:
        extra_state = {"pool": pool, "pool_ready": torch.tensor(True), "usage": torch.zeros(pool.shape[0], dtype=torch.long)}
        extra_state.update({f"croc_head.{k}": v for k, v in head.items()})
        save_state(extra_state, output)
    if head:
        notes.append("Croc's reconstruction head (transform_block: learned positions + one BERT layer + linear) "
                     "is kept as croc_head.* in " + STATE_FILE + "; victor's heads have other layers, "
                     "so a continued stage 1.5 trains a fresh head")
    report = {
        "source": str(src), "source_model_type": config["model_type"], "family": family,
        "model_type": model.config.model_type, "normalized_projector": normalized, "vision": vision,
        "vision_weights": "stored in the checkpoint" if stored_tower else "loaded from the vision source",
        "vision_feature_layer": layer, "vision_feature_select_strategy": strategy, "image_aspect_ratio": aspect,
        "image_seq_length": n_visual, "chat_template": chat_template, "image_token_added": bool(added),
        "dtype": str(dtype).removeprefix("torch."), "pool": list(pool.shape) if pool is not None else None,
        "head_tensors": len(head), "notes": notes,
    }
    (output / "victor_convert.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _check_keys(model, tensors: dict) -> None:
    expected = set(model.state_dict())
    unexpected = sorted(set(tensors) - expected)
    missing = sorted(expected - set(tensors))
    if unexpected:
        raise ConversionError(f"tensors with no place in {type(model).__name__}: {unexpected[:10]}")
    if missing:
        raise ConversionError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs: {missing[:10]}")
