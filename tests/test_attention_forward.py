"""Attention modes through `VisualComprehension.forward` on two-image samples: what each image may see."""
import copy

import pytest
import torch
from PIL import Image

from victor.config import ComprehensionConfig
from victor.data.collate import LlavaCollator
from victor.data.llava import Sample
from victor.model.comprehension import VisualComprehension


def image(seed):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy())


def two_images(llava, processor, second: int):
    sample = Sample("s", [{"role": "user", "content": "<image>\nthe left image .\n<image>\ndescribe both ."},
                          {"role": "assistant", "content": "a red circle and a blue square ."}],
                    [image(1), image(second)], index=7)
    return LlavaCollator(processor, llava.config.image_seq_length, "chat", image_keys=True)([sample])


@pytest.fixture(scope="module")
def runs(tiny_llava):
    """Logits and losses per attention mode, for the same sample with two different second images."""
    llava, processor = tiny_llava
    llava = copy.deepcopy(llava)
    out = {}
    for mode in ("causal", "bidirectional-visual", "prefix"):
        vc = VisualComprehension(llava, ComprehensionConfig(pool_size=16, pool_init="unit", attention=mode)).eval()
        torch.manual_seed(0)
        vc._init_pool()
        for second in (2, 3):
            batch = two_images(llava, processor, second)
            with torch.no_grad():
                result = vc(**batch)
            out[mode, second] = (result["logits"][0], result["loss"], batch["input_ids"][0])
    n = llava.config.image_seq_length
    ids = out["causal", 2][2]
    positions = (ids == llava.config.image_token_id).nonzero().flatten()
    return out, positions[:n], positions[n:]


@pytest.mark.parametrize("mode,sees_image_2", [("causal", False), ("bidirectional-visual", False), ("prefix", True)])
def test_first_image_sees_the_second_only_in_prefix_mode(runs, mode, sees_image_2):
    out, first, _ = runs
    a, b = out[mode, 2][0][first], out[mode, 3][0][first]
    assert (not torch.allclose(a, b, atol=1e-6)) == sees_image_2


def test_forward_applies_the_attention_mode(runs):
    out, first, second = runs
    causal, bidir, prefix = (out[m, 2][0] for m in ("causal", "bidirectional-visual", "prefix"))
    # an image's first token sees the rest of its own image only when visual attention is bidirectional
    assert not torch.allclose(causal[first[0]], bidir[first[0]], atol=1e-6)
    assert not torch.allclose(causal[second[0]], bidir[second[0]], atol=1e-6)
    # the prefix also opens the text between and after the images
    assert not torch.allclose(bidir[first[0]], prefix[first[0]], atol=1e-6)
    losses = {m: float(out[m, 2][1]) for m in ("causal", "bidirectional-visual", "prefix")}
    assert len({round(v, 6) for v in losses.values()}) == 3, losses


def with_attention(llava, impl):
    model = copy.deepcopy(llava)
    model.config._attn_implementation = impl
    model.config.text_config._attn_implementation = impl
    return model


@pytest.mark.parametrize("mode", ["causal", "bidirectional-visual", "prefix"])
def test_flex_attention_follows_the_mode_like_eager(tiny_llava, mode):
    """docs/method.md: the masks are transformers' own, so flex attention runs every mode. On CPU (torch
    2.13) flex attention runs through torch.compile's CPU backend; a padded batch of a two-image and
    a one-image sample must give the logits and losses of eager attention."""
    llava, processor = tiny_llava
    samples = [Sample("two", [{"role": "user", "content": "<image>\nthe left image .\n<image>\ndescribe both ."},
                              {"role": "assistant", "content": "a red circle and a blue square ."}],
                      [image(1), image(2)], index=0),
               Sample("one", [{"role": "user", "content": "<image>\nwhat colour ?"},
                              {"role": "assistant", "content": "red"}], [image(3)], index=1)]
    batch = LlavaCollator(processor, llava.config.image_seq_length, "chat", image_keys=True)(samples)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # the second row is padded
    out = {}
    for impl in ("eager", "flex_attention"):
        torch.manual_seed(0)
        vc = VisualComprehension(with_attention(llava, impl), ComprehensionConfig(pool_size=16, pool_init="unit",
                                                                                 attention=mode)).eval()
        with torch.no_grad():
            out[impl] = vc(**batch)
    real = batch["attention_mask"].bool()
    assert torch.allclose(out["flex_attention"]["logits"][real], out["eager"]["logits"][real], atol=1e-5)
    for key in ("lm_loss", "recon_loss"):
        assert torch.allclose(out["flex_attention"][key], out["eager"][key], atol=1e-6), key
