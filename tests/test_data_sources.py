"""Sources behind `make_dataset`: Hugging Face datasets (parquet, arrow, save_to_disk) as LLaVA
samples with skips, and mixture YAMLs whose observed proportions follow their weights."""
import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from victor.config import ConfigError, DataArguments
from victor.data.llava import Sample
from victor.data.sampler import ModalityLengthGroupedSampler
from victor.data.skips import Skipped
from victor.data.sources import MixtureDataset, make_dataset, probe_texts, quotas, read_mixture

datasets = pytest.importorskip("datasets")


def turn(who, value):
    return {"from": who, "value": value}


def png(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


def write_hf(tmp_path, n=12, name="d"):
    """Rows with embedded images (even rows), text-only rows, and one broken row (the last)."""
    rows = {"id": [f"{name}{i}" for i in range(n)],
            "image": [{"bytes": png((i * 20 % 255, 0, 0)), "path": f"{i}.png"} if i % 2 == 0 else None
                      for i in range(n)],
            "conversations": [[turn("human", "<image>\ndescribe" if i % 2 == 0 else "hello"),
                               turn("gpt", " ".join(["red"] * (i + 1)))] for i in range(n)]}
    rows["conversations"][-1] = [turn("gpt", "no question")]
    rows["image"][2] = {"bytes": b"not a png", "path": "broken.png"}
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "conversations": [{"from": datasets.Value("string"),
                                                     "value": datasets.Value("string")}]})
    table = datasets.Dataset.from_dict(rows, features=features)
    table.to_parquet(str(tmp_path / f"{name}.parquet"))
    table.save_to_disk(str(tmp_path / f"{name}-saved"))
    return tmp_path / f"{name}.parquet", tmp_path / f"{name}-saved"


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def expected_hf_items(ds, n):
    got = [ds[i] for i in range(n)]
    assert [type(x).__name__ for x in got] == ["Sample"] * 2 + ["Skipped"] + ["Sample"] * (n - 4) + ["Skipped"]
    assert got[0].images[0].size == (8, 8) and got[1].images == [] and got[0].where.endswith("[0]")
    assert got[2].reason == "corrupt_image" and got[2].record_id == "d2" and got[2].field == "image"
    assert got[-1].reason == "turn_order" and got[-1].record_id == f"d{n - 1}"
    return got


@pytest.mark.parametrize("which", ["parquet", "saved", "arrow"])
def test_hf_sources_read_as_llava_samples_with_skips(tmp_path, which):
    parquet, saved = write_hf(tmp_path)
    path = {"parquet": parquet, "saved": saved, "arrow": next(saved.glob("*.arrow"))}[which]
    ds = make_dataset(DataArguments(data_path=str(path)))
    assert len(ds) == 12
    expected_hf_items(ds, 12)
    assert dict(ds.skipped) == {"corrupt_image": 1, "turn_order": 1}
    lengths = ds.modality_lengths
    assert list(lengths[:4]) == [3, -3, 5, -5] and lengths[-1] == -2  # words, negated for text-only rows
    assert probe_texts(ds, 0, 4)[0].images == []  # text only: no image decoded


def test_mixture_proportions_follow_far_from_uniform_weights(tmp_path):
    """Observed source shares over an epoch of 3000 draws (the Trainer's shuffled order) within
    4 binomial standard errors of the weights; the unweighted concatenation fails the same check."""
    for name, n in (("a", 400), ("b", 50), ("c", 1000)):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            [{"id": f"{name}{i}", "conversations": [turn("human", "hi"), turn("gpt", "x " * (i % 5 + 1))]}
             for i in range(n)]))
    weights = {"a": 0.05, "b": 0.8, "c": 0.15}  # b is tiny and oversampled 48x; c undersampled
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n" + "".join(f"  - json_path: {k}.json\n    weight: {w}\n" for k, w in weights.items())
                   + "samples: 3000\n")

    def shares(dataset, draws=3000):
        import torch

        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1))[:draws].tolist()
        ids = Counter(dataset[i].id[0] for i in order)
        return {k: ids[k] / draws for k in weights}, draws

    def within(dataset):
        got, draws = shares(dataset)
        return all(abs(got[k] - w) <= 4 * np.sqrt(w * (1 - w) / draws) for k, w in weights.items())

    weighted = make_dataset(DataArguments(data_path=str(mix)))
    assert isinstance(weighted, MixtureDataset) and weighted.counts() == {"a.json": 150, "b.json": 2400, "c.json": 450}
    assert within(weighted)
    b_rows = Counter(weighted[i].id for i in range(len(weighted)) if weighted.source[i] == 1)
    assert set(b_rows) == {f"b{i}" for i in range(50)} and set(b_rows.values()) == {48}  # whole cycles, every row
    plain = make_dataset(DataArguments(data_path=",".join(str(tmp_path / f"{k}.json") for k in weights)))
    assert len(plain) == 1450 and not within(plain)


def test_mixture_of_every_map_style_kind_groups_by_modality(tmp_path):
    parquet, saved = write_hf(tmp_path)
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(
        {"id": f"t{i}", "conversations": [turn("human", "hi"), turn("gpt", "x")]}) for i in range(30)))
    (tmp_path / "mix.yaml").write_text(
        "datasets:\n  - json_path: t.jsonl\n    weight: 1\n"
        f"  - path: {parquet.name}\n    weight: 1\n    sampling_strategy: first:6\n"
        f"  - path: {saved.name}\n    weight: 2\nsamples: 64\nseed: 3\n")
    ds = make_dataset(DataArguments(data_path=str(tmp_path / "mix.yaml")))
    assert ds.counts() == {"t.jsonl": 16, "d.parquet": 16, "d-saved": 32}
    lengths = ds.stored_lengths
    assert lengths is not None and len(lengths) == 64
    items = [ds[i] for i in range(64)]
    assert all(x.index == i for i, x in enumerate(items))  # the mixture's positions key stage 1.5's masks
    ident = [x.id if isinstance(x, Sample) else x.record_id for x in items]
    assert {ident[i] for i in range(64) if ds.source[i] == 1} == {f"d{i}" for i in range(6)}  # first:6
    assert dict(ds.skipped) and sum(ds.skipped.values()) == sum(isinstance(x, Skipped) for x in items)
    sampler = ModalityLengthGroupedSampler(ds.modality_lengths, batch_size=4, groups=2, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(64))
    images = [i for i in range(64) if lengths[i] > 0]
    for start in range(0, 64 - 8 - len(images) % 8 - 8, 8):  # full megabatches are one modality
        block = order[start:start + 8]
        assert len({lengths[i] > 0 for i in block}) == 1


@pytest.mark.parametrize("text, message", [
    ("datasets: []", "a non-empty list of sources"),
    ("datasets:\n  - weight: 1", "no json_path"),
    ("datasets:\n  - json_path: a.json\n    wieght: 1", "unknown key\\(s\\) wieght"),
    ("datasets:\n  - json_path: a.json\n    weight: 1\n  - json_path: b.json", "give every source one"),
    ("datasets:\n  - json_path: a.json\n    weight: -1", "weight=-1 must be a number >= 0"),
    ("datasets:\n  - json_path: a.json\nsamples: 0", "samples=0"),
    ("datasets:\n  - json_path: a.json\n    sampling_strategy: some", "sampling_strategy='some'"),
])
def test_mixture_mistakes_name_the_file_and_entry(tmp_path, text, message):
    (tmp_path / "a.json").write_text(json.dumps([{"conversations": [turn("human", "a"), turn("gpt", "b")]}]))
    (tmp_path / "b.json").write_text((tmp_path / "a.json").read_text())
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        make_dataset(DataArguments(data_path=str(tmp_path / "m.yaml")))


def test_quotas_sum_to_the_total():
    assert quotas([0.5, 0.25, 0.25], 7).tolist() == [3, 2, 2]  # remainders .5 < .75
    assert quotas([1, 1, 1], 10).sum() == 10 and quotas([0, 1], 5).tolist() == [0, 5]


def test_probe_takes_the_shortest_stored_lengths(tmp_path):
    """Among 2000 long records one short one: a random probe of 16 would likely miss it."""
    records = [{"id": f"long{i}", "conversations": [turn("human", "hi"), turn("gpt", "x " * 300)]} for i in range(2000)]
    records.insert(1234, {"id": "short", "conversations": [turn("human", "hi"), turn("gpt", "x")]})
    (tmp_path / "d.json").write_text(json.dumps(records))
    ds = make_dataset(DataArguments(data_path=str(tmp_path / "d.json")))
    assert "short" in [s.id for s in probe_texts(ds, 0, 16)]
    assert isinstance(read_mixture, object) and isinstance(ds[1234], Sample)
