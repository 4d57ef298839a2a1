"""The tiny LLM's text pretraining: scenes read as soft slots at the image's place."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from victor.data.collate import IGNORE
from victor.tiny.backbones import save_backbones
from victor.tiny.pretrain import (
    SceneReader,
    collate_scenes,
    pretrain_llm,
    scene_examples,
    scene_slots,
)
from victor.tiny.scenes import POSITIONS, WorldConfig
from victor.tiny.world import build_tokenizer, generate_world, load_scenes, world_texts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("tinyworld")
    generate_world(out, WorldConfig(seed=3, n_train=160, n_val=8))
    tok = build_tokenizer(world_texts(out))
    _, llm = save_backbones(out / "backbones", tok, llm_layers=2)
    return out, AutoTokenizer.from_pretrained(llm), llm


def test_scene_slots_are_row_major_object_words(setup):
    out, tok, _ = setup
    scenes = load_scenes(out)
    for scene in list(scenes.values())[:20]:
        slots = scene_slots(scene, tok)
        assert len(slots) == len(POSITIONS) == 9
        by_region = {o["region"]: o for o in scene["objects"]}
        for region, words in enumerate(slots):
            if region in by_region:
                o = by_region[region]
                assert tok.convert_ids_to_tokens(words) == [o["size"], o["colour"], o["shape"]]
                assert POSITIONS[region] == o["position"]  # row-major, as the visual tokens
            else:
                assert words == []


def test_scene_examples_one_slot_per_image_token_and_answer_labels(setup):
    out, tok, _ = setup
    examples = scene_examples(tok, out)
    image_id = tok.convert_tokens_to_ids("<image>")
    assert len(examples) > 3 * 160  # stage 1 + 1.5 + 2 records (+ told-answer variants)
    assert sum(not e["slots"] for e in examples) > 0 and sum(bool(e["slots"]) for e in examples) > 3 * 150
    for e in examples:
        assert sum(t == image_id for t in e["input_ids"]) == len(e["slots"])
        assert len(e["slots"]) in (0, 9)  # text-only records have none
        supervised = [t for t, lab in zip(e["input_ids"], e["labels"]) if lab != IGNORE]
        assert supervised and supervised[-1] == tok.eos_token_id
        assert all(lab in (IGNORE, t) for t, lab in zip(e["input_ids"], e["labels"]))
    # stage-1 records use the plain template: <s>, the 9 image tokens, then the caption
    first = examples[0]
    assert first["input_ids"][:10] == [tok.bos_token_id] + [image_id] * 9
    assert all(lab == IGNORE for lab in first["labels"][:10]) and first["labels"][10] != IGNORE


def test_scene_reader_puts_word_sums_at_image_positions(setup):
    out, tok, llm = setup
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(llm).eval()
    image_id = tok.convert_tokens_to_ids("<image>")
    batch_examples = scene_examples(tok, out)[:3] + scene_examples(tok, out)[-2:]
    batch = collate_scenes(batch_examples, tok.pad_token_id)
    reader = SceneReader(lm, image_id)
    # reference: a loop that writes each slot's word-embedding sum over its image token
    embed = lm.get_input_embeddings().weight
    ref = embed[batch["input_ids"]].clone()
    for row, e in enumerate(batch_examples):
        positions = [i for i, t in enumerate(e["input_ids"]) if t == image_id]
        for pos, words in zip(positions, e["slots"]):
            ref[row, pos] = embed[words].sum(0) if words else torch.zeros(embed.shape[1])
    with torch.no_grad():
        got = reader(**batch).logits
        want = lm(inputs_embeds=ref, attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, want)


def test_changing_a_slot_changes_only_what_follows_it(setup):
    out, tok, llm = setup
    lm = AutoModelForCausalLM.from_pretrained(llm).eval()
    image_id = tok.convert_tokens_to_ids("<image>")
    e = scene_examples(tok, out)[5]
    other = dict(e, slots=[s if k != 4 else tok.convert_tokens_to_ids(["large", "red", "star"])
                           for k, s in enumerate(e["slots"])])
    a, b = collate_scenes([e], tok.pad_token_id), collate_scenes([other], tok.pad_token_id)
    reader = SceneReader(lm, image_id)
    with torch.no_grad():
        la, lb = reader(**a).logits[0], reader(**b).logits[0]
    fifth = [i for i, t in enumerate(e["input_ids"]) if t == image_id][4]
    torch.testing.assert_close(la[:fifth], lb[:fifth])
    assert (la[fifth:] - lb[fifth:]).abs().amax() > 1e-3


@pytest.mark.slow
def test_pretraining_teaches_the_llm_to_read_the_slots(setup, tmp_path):
    """After a short pretraining the answers depend on the scene: the loss with each example's
    own slots is clearly lower than with another example's slots."""
    out, tok, llm = setup
    import shutil

    llm_copy = tmp_path / "llm"
    shutil.copytree(llm, llm_copy)
    torch.manual_seed(0)
    pretrain_llm(llm_copy, out, steps=150, batch_size=16, seed=0)
    reader = SceneReader(AutoModelForCausalLM.from_pretrained(llm_copy).eval(), tok.convert_tokens_to_ids("<image>"))
    examples = [e for e in scene_examples(tok, out) if any(e["slots"])][:96]
    batch = collate_scenes(examples, tok.pad_token_id)
    shuffled = dict(batch, slot_words=batch["slot_words"].roll(1, 0))
    with torch.no_grad():
        own, wrong = reader(**batch).loss.item(), reader(**shuffled).loss.item()
    assert own < 0.8 * wrong, (own, wrong)


def test_prepare_world_reuses_matching_backbones_and_rebuilds_others(tmp_path):
    import json

    from victor.tiny.prepare import BACKBONES_FORMAT, prepare_world

    world = WorldConfig(seed=1, n_train=12, n_val=4)
    kw = dict(llm_pretrain_steps=2, vision_pretrain_steps=2)
    _, vision, llm = prepare_world(tmp_path, world, **kw)
    record = tmp_path / "backbones" / "victor_backbones.json"
    assert json.loads(record.read_text())["format"] == BACKBONES_FORMAT
    weights = tmp_path / "backbones" / "llm" / "model.safetensors"
    first = weights.stat().st_mtime_ns
    prepare_world(tmp_path, world, **kw)  # same arguments: reused
    assert weights.stat().st_mtime_ns == first
    prepare_world(tmp_path, world, llm_pretrain_steps=3, vision_pretrain_steps=2)  # other steps: rebuilt
    assert weights.stat().st_mtime_ns != first
    assert json.loads(record.read_text())["llm_pretrain_steps"] == 3
    # backbones without a record (an older victor, or a run killed mid-way) are rebuilt
    record.unlink()
    again = weights.stat().st_mtime_ns
    prepare_world(tmp_path, world, llm_pretrain_steps=3, vision_pretrain_steps=2)
    assert record.exists() and weights.stat().st_mtime_ns != again
    assert not (tmp_path / "backbones.partial").exists()
    assert AutoTokenizer.from_pretrained(llm).convert_tokens_to_ids("<image>") == 4
