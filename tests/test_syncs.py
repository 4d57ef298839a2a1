"""No host synchronisation in victor's part of a stage-1.5 micro-step (docs/performance.md).

`victor.bench.syncs.SyncCounter` records every place where a GPU would make the host wait: scalar
reads, tolist/numpy, device-to-host copies and ops with data-dependent output shapes. The counter
is checked against planted syncs first; then one training micro-step of stage 1.5 (forward,
losses, statistics, backward) is counted over victor's files: nothing with the nearest matcher,
the one copy of the costs to the solver with Hungarian. What transformers' and torch's code does
is listed (printed), not counted.
"""
import copy
from types import SimpleNamespace

import pytest
import torch

from victor.bench.syncs import VICTOR, SyncCounter, short
from victor.config import ComprehensionConfig
from victor.data.collate import LlavaCollator
from victor.data.llava import Sample
from victor.model.comprehension import VisualComprehension
from victor.train.trainer import VictorTrainer
from PIL import Image

HERE = __file__


def test_counter_catches_each_kind_of_sync():
    t = torch.arange(6.0)
    mask = t > 2
    planted = {
        "item": lambda: t[0].item(),
        "float": lambda: float(t[1]),
        "bool": lambda: bool(t[1] > 0),
        "tolist": lambda: t.tolist(),
        "numpy": lambda: t.numpy(),
        "nonzero": lambda: mask.nonzero(),
        "mask index": lambda: t[mask],
        "mask assign": lambda: t.clone().__setitem__(mask, 0.0),
        "masked_select": lambda: t.masked_select(mask),
        "unique": lambda: t.unique(),
    }
    for name, plant in planted.items():
        with SyncCounter() as counter:
            plant()
        assert counter.count((HERE,)) >= 1, name
        assert counter.count() == 0, name  # none of them is in victor's files
    with SyncCounter() as counter:  # index by integers, gather, scatter, where: no sync
        idx = torch.tensor([0, 2])
        t[idx], t.gather(0, idx), t.clone().index_copy_(0, idx, t[:2]), torch.where(mask, t, 0).sum()
    assert counter.count((HERE,)) == 0, counter.events


def image(i):
    return Image.new("RGB", (32, 32), [(200, 10, 10), (10, 200, 10), (10, 10, 200)][i % 3])


def batch_of(llava, processor):
    samples = [Sample(str(i), [{"role": "user", "content": "<image>\ndescribe the image ."},
                               {"role": "assistant", "content": "a red circle at the top left ." * (i + 1)}],
                      [image(i)], index=i) for i in range(2)]
    return LlavaCollator(processor, llava.config.image_seq_length, "chat", image_keys=True)(samples)


@pytest.mark.parametrize("matching,attention,head,allowed", [
    ("nearest", "causal", "linear", 0),
    ("hungarian", "causal", "linear", 1),  # the one copy of the costs to the solver (numpy())
    ("hungarian", "bidirectional-visual", "transformer", 1),
    ("nearest", "prefix", "transformer", 0),
])
def test_training_micro_step_has_no_host_sync(tiny_llava, matching, attention, head, allowed):
    llava, processor = tiny_llava
    vc = VisualComprehension(copy.deepcopy(llava), ComprehensionConfig(
        pool_size=32, pool_init="unit", matching=matching, attention=attention, recon_head=head)).train()
    batch = batch_of(llava, processor)
    counts = {"num_items_in_batch": (batch["labels"] != -100).sum(), "num_recon_items": torch.tensor(24)}
    vc(**batch, **counts)["loss"].backward()  # the first step checks the pool is ready (one read)
    with SyncCounter() as counter:
        out = vc(**batch, **counts, mask_step=1)
        out["loss"].backward()
    print(f"\n{matching}/{attention}/{head}:")
    for kind, where, n, counted in counter.table():
        print(f"  {'COUNTED' if counted else 'listed '} {n}x {kind:32s} {short(where)}")
    victor = [e for e in counter.events if e.in_scope((VICTOR,))]
    assert len(victor) == allowed, victor
    assert all(e.kind == "numpy()" and "matching.py" in e.where for e in victor)
    assert out["logits"] is None  # training: no full-vocabulary logits
    assert all(torch.is_tensor(v) for v in out["stats"].values())


def test_statistics_are_read_only_on_logging_steps(tiny_llava):
    """The Trainer keeps each micro-batch's statistics as tensors and reads them once when it logs."""
    llava, processor = tiny_llava
    vc = VisualComprehension(copy.deepcopy(llava), ComprehensionConfig(pool_size=32, pool_init="unit")).train()
    batch = batch_of(llava, processor)
    fake = SimpleNamespace(_last_logged_step=None, state=SimpleNamespace(global_step=0), _terms={},
                           _extra_logs={})
    from collections import defaultdict
    fake._extra_logs = defaultdict(list)
    outs = []
    for step in range(3):
        out = vc(**batch, mask_step=step)
        outs.append(out)
        with SyncCounter() as counter:
            VictorTrainer._note_terms(fake, out, 0.5)
        assert counter.count() == 0
    with SyncCounter() as counter:
        logged = VictorTrainer._statistics(fake)
    assert counter.count() == 1 and counter.events[0].kind == "tolist()"  # one read per logging step
    for key in outs[0]["stats"]:
        expected = sum(float(o["stats"][key]) for o in outs) / 3
        assert logged[key] == pytest.approx(expected, rel=1e-5, abs=1e-6), key
