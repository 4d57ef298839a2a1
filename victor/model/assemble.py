"""Vision encoder + causal LM (hub ids or local dirs) -> LlavaForConditionalGeneration + processor.

The result is a stock transformers LLaVA: weights of both backbones are loaded, the 2-layer
GELU projector is fresh, `<image>` is a special token inside the vocabulary, and the
processor expands `<image>` to exactly the number of visual tokens the encoder produces.
Nothing here looks at model names: the number of extra (CLS-like) tokens the encoder emits
is measured with one dummy forward pass.
"""
from __future__ import annotations

import logging

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)

from victor.data.templates import (
    CHATML_CHAT_TEMPLATE,
    IMAGE_TOKEN,
    VICUNA_CHAT_TEMPLATE,
)
from victor.model.normalized import (
    VictorLlavaConfig,
    VictorLlavaForConditionalGeneration,
)

log = logging.getLogger(__name__)

CHAT_TEMPLATES = {"vicuna": VICUNA_CHAT_TEMPLATE, "chatml": CHATML_CHAT_TEMPLATE}
# What an encoder's image processor is rebuilt from when it must pad (LlavaImageProcessor's options).
IMAGE_SETTINGS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                  "do_normalize", "image_mean", "image_std", "do_convert_rgb")


class AssemblyError(ValueError):
    pass


def _vision_config(vision: str):
    config = AutoConfig.from_pretrained(vision)
    # A full dual-encoder checkpoint (CLIP, SigLIP) carries the image tower as a sub-config.
    return getattr(config, "vision_config", config)


def load_vision_tower(vision: str, dtype=None) -> torch.nn.Module:
    """The image tower alone, with its pretrained weights, from a hub id or directory."""
    config = _vision_config(vision)
    model_cls = AutoModel._model_mapping[type(config)]
    return model_cls.from_pretrained(vision, config=config, dtype=dtype)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, chat_template: str | None) -> PreTrainedTokenizerBase:
    """Add `<image>` (special, never split) and a pad token; set the chat template."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if chat_template is not None:
        tokenizer.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
    if not tokenizer.chat_template:
        raise AssemblyError(
            "the tokenizer has no chat template; pass chat_template='vicuna' or a Jinja template string"
        )
    return tokenizer


def processed_image_size(image_processor) -> tuple[int, int]:
    """(height, width) of the pixels a fixed-size image processor produces."""
    size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    return size.get("height") or size.get("shortest_edge"), size.get("width") or size.get("shortest_edge")


RESAMPLE_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}  # PIL's numbering, as processors save it


def with_resample(image_processor, resample: str | None):
    """A copy of the image processor that resizes with `resample` ('bicubic', ...; None: unchanged)."""
    if resample is None:
        return image_processor
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"image_resample={resample!r}; choose one of {', '.join(RESAMPLE_FILTERS)}")
    if not hasattr(image_processor, "resample"):
        raise AssemblyError(f"{type(image_processor).__name__} has no resample setting to set to {resample}")
    settings = image_processor.to_dict() | {"resample": RESAMPLE_FILTERS[resample]}
    return type(image_processor).from_dict(settings)


def image_processor_for(image_processor, aspect: str | None, resample: str | None):
    """The processor a stage uses: the encoder's (or init_from's) with the recipe's aspect and filter."""
    return with_resample(with_aspect_ratio(image_processor, aspect), resample)


def with_aspect_ratio(image_processor, aspect: str | None):
    """The image processor for `aspect` ('pad', 'native' or None: unchanged).

    'pad' is transformers' `LlavaImageProcessor(do_pad=True)` with the encoder's own resize, crop
    and normalisation settings: each image is padded to a square with the mean colour, then
    resized, so the output size (and the visual token count) stays the encoder's. 'native'
    turns padding off again. Saved with the processor, so inference preprocesses the same way.
    """
    if aspect not in (None, "pad", "native"):
        raise ValueError(f"image_aspect_ratio={aspect!r}; choose pad or native")
    is_llava = type(image_processor).__name__.startswith("LlavaImageProcessor")  # torchvision or PIL backend
    if aspect is None or (aspect == "pad") == (is_llava and bool(image_processor.do_pad)):
        return image_processor
    settings = {k: v for k, v in image_processor.to_dict().items() if k in IMAGE_SETTINGS and v is not None}
    settings.setdefault("do_center_crop", False)  # SigLIP-style processors resize straight to a square
    settings.setdefault("crop_size", settings["size"])  # unused without centre-crop; not LLaVA's 224 default
    return LlavaImageProcessor(**settings, do_pad=aspect == "pad")


@torch.no_grad()
def count_visual_tokens(vision_tower, image_processor, feature_layer: int, strategy: str) -> tuple[int, int]:
    """(visual tokens per image, extra non-patch tokens) measured with one blank image."""
    from PIL import Image

    h, w = processed_image_size(image_processor)
    pixels = image_processor(Image.new("RGB", (w, h)), return_tensors="pt")["pixel_values"]
    pixels = pixels.to(next(vision_tower.parameters()).dtype)
    hidden = vision_tower(pixels, output_hidden_states=True).hidden_states[feature_layer]
    patch = vision_tower.config.patch_size
    n_patches = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
    extra = hidden.shape[1] - n_patches
    n_visual = hidden.shape[1] - (1 if strategy == "default" else 0)
    if strategy == "default" and extra < 1:
        raise AssemblyError(
            "vision_feature_select_strategy='default' drops a CLS token, but this encoder emits "
            f"{hidden.shape[1]} tokens for {n_patches} patches (no CLS); use 'full'"
        )
    return n_visual, extra


def build_model(
    vision: str,
    llm: str,
    *,
    tokenizer: str | None = None,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str = "default",
    normalize_projector: bool = False,
    chat_template: str | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    image_aspect_ratio: str | None = None,
    image_resample: str | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Assemble a LLaVA model from a vision encoder and a causal LM, both with their weights.

    `vision`, `llm` and `tokenizer` are hub ids or local directories. The projector is a fresh
    2-layer GELU MLP. With `normalize_projector`, projector outputs are L2-normalised per token
    (the authors' option) and the model gets its own model type (see `normalized.py`).
    `image_aspect_ratio='pad'` makes the processor pad images to a square (`with_aspect_ratio`);
    `image_resample` sets its resize filter (`with_resample`).
    """
    vision_tower = load_vision_tower(vision, dtype=dtype)
    image_processor = image_processor_for(AutoImageProcessor.from_pretrained(vision), image_aspect_ratio, image_resample)
    lm = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(tokenizer or llm), chat_template)

    n_visual, extra = count_visual_tokens(
        vision_tower, image_processor, vision_feature_layer, vision_feature_select_strategy
    )
    if len(tok) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tok), mean_resizing=True)

    config_cls = VictorLlavaConfig if normalize_projector else LlavaConfig
    config = config_cls(
        vision_config=vision_tower.config,
        text_config=lm.config,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=n_visual,
        projector_hidden_act="gelu",
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        tie_word_embeddings=getattr(lm.config, "tie_word_embeddings", False),
    )
    model_cls = VictorLlavaForConditionalGeneration if normalize_projector else LlavaForConditionalGeneration
    config._attn_implementation = attn_implementation
    model = model_cls(config)
    if dtype is not None:
        model.to(dtype)
    model.model.vision_tower.load_state_dict(vision_tower.state_dict())
    model.model.language_model.load_state_dict(lm.get_decoder().state_dict())
    model.lm_head.load_state_dict(lm.get_output_embeddings().state_dict())
    model.config.text_config.vocab_size = lm.get_input_embeddings().num_embeddings
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id

    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=vision_tower.config.patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        chat_template=tok.chat_template,
        num_additional_image_tokens=extra,
    )
    return model, processor


def load_model(path: str, dtype: torch.dtype | None = None, attn_implementation: str | None = None,
               merge_lora: bool = True):
    """Load a victor/LLaVA checkpoint (plain `llava` or `victor_llava`) and its processor; a stage trained
    with LoRA has its adapter merged in (`merge_lora`; see `victor.model.adapter`)."""
    from transformers import (  # victor_llava is registered on import
        AutoModelForImageTextToText,
        AutoProcessor,
    )

    kwargs = {"dtype": dtype} if dtype is not None else {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    # transformers remembers the key renamings it used while loading and reverts them on save; under
    # DeepSpeed ZeRO-3 (weights loaded inside zero.Init) that record differs and the saved keys
    # would too. Forget it, so every stage saves the layout a freshly built LLaVA saves.
    model._weight_conversions = None
    if merge_lora:
        from victor.model.adapter import merge_adapter

        model = merge_adapter(model, path)
    processor = AutoProcessor.from_pretrained(path)
    return model, processor
