"""The record index (`victor.data.index`): the same records, skips and lengths as reading the file
into memory, a few bytes per record in the dataset object, rebuilt when the file changes."""
import json
import os
import pickle

import numpy as np
import pytest

from victor.cli import main
from victor.data.index import IndexedFile, candidate_dirs, ensure_index
from victor.data.llava import DataFormatError, LlavaDataset, read_entries


def turn(who, value):
    return {"from": who, "value": value}


def record(i, image=True):
    rec = {"id": f"r{i}", "conversations": [turn("human", "<image>\nwhat ?" if image else "hi"),
                                             turn("gpt", " ".join(["word"] * (i % 7 + 1)))]}
    if image:
        rec["image"] = f"{i}.png"
    return rec


ODD_RECORDS = [record(0), "just a string", {"id": "caf\u00e9 \u4e2d", "conversations": [turn("human", "\u00e9t\u00e9"),
                                                                                       turn("gpt", "\ud83d\ude00 ok")]},
               {"id": "lone", "conversations": [turn("human", "x\ud800y"), turn("gpt", "z")]},
               [1, 2], None, 12.5, {"id": 7, "conversations": "not a list"}, record(8, image=False)]


def same_as_in_memory(path):
    indexed, loaded = LlavaDataset(str(path)), LlavaDataset(str(path), in_memory=True)
    assert len(indexed) == len(loaded) == len(read_entries(path))
    for i in range(len(loaded)):
        assert indexed.records[i] == loaded.records[i], i
        a, b = indexed[i], loaded[i]
        assert type(a) is type(b) and str(a) == str(b), i
    assert list(indexed.modality_lengths) == list(loaded.modality_lengths)
    assert dict(indexed.skipped) == dict(loaded.skipped)
    return indexed


def test_json_list_is_indexed_with_the_same_records_skips_and_lengths(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ODD_RECORDS, indent=2))
    indexed = same_as_in_memory(path)
    assert indexed.records.files[0].format == "json"
    assert (tmp_path / "d.json.vindex" / "records.jsonl").is_file()
    assert isinstance(indexed.stored_lengths, np.ndarray) and indexed.stored_lengths.dtype == np.int32


def test_jsonl_is_indexed_in_place_with_its_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r).encode() for r in ODD_RECORDS] + [b'{"id": "half", ', b'{"id": "caf\xe9"}']
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines[:3]) + b"\n\n  \n" + b"\n".join(lines[3:]) + b"\n")
    indexed = same_as_in_memory(path)
    assert indexed.records.files[0].format == "jsonl"
    assert not (tmp_path / "d.jsonl.vindex" / "records.jsonl").exists()  # no copy of a JSONL file
    assert indexed[3].where == f"{path}:6"


def test_a_multi_line_single_object_and_an_empty_list(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(record(1), indent=2))
    assert len(same_as_in_memory(tmp_path / "one.json")) == 1
    (tmp_path / "empty.json").write_text("[ ]")
    assert len(same_as_in_memory(tmp_path / "empty.json")) == 0


def test_big_files_parse_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr("victor.data.index.CHUNK", 97)  # records straddle every read
    path = tmp_path / "d.json"
    path.write_text(json.dumps([record(i, image=i % 3 > 0) for i in range(300)] + [12345678901234567890]))
    same_as_in_memory(path)


@pytest.mark.parametrize("content, message", [
    (b'[{"id": "caf\xe9", "conversations": []}]', r"bad\.json:1: not valid UTF-8 \(byte 12 of the file"),
    (b'"hello"', r"bad\.json: expected a list of LLaVA records.*got a JSON str"),
    (b'[{"id": 1}\n{"x": ', r"bad\.json:1: neither a JSON list nor JSONL"),
    (b'[{"id": 1}, {"x": 2}]', r"no record has a 'conversations' field"),
    (b'{"question_id": 1}\n', r"no record has a 'conversations' field"),
    (b"", r"bad\.json:1: neither a JSON list nor JSONL \(empty file\)"),
])
def test_file_level_errors_are_those_of_read_entries(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=message):
        read_entries(path)
    with pytest.raises(DataFormatError, match=message):
        LlavaDataset(str(path))
    assert not any(p.name.startswith("bad.json.vindex") for p in tmp_path.iterdir() if p.is_dir())


def test_the_index_is_reused_and_rebuilt_when_the_file_changes(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([record(i) for i in range(5)]))
    directory = ensure_index(path)
    built = (directory / "meta.json").stat().st_mtime_ns
    assert ensure_index(path) == directory and (directory / "meta.json").stat().st_mtime_ns == built
    path.write_text(json.dumps([record(i) for i in range(7)]))
    assert len(LlavaDataset(str(path))) == 7


def test_the_index_goes_to_victor_index_dir_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("VICTOR_INDEX_DIR", str(tmp_path / "cache"))
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(record(i)) for i in range(3)))
    assert len(LlavaDataset(str(path))) == 3
    assert candidate_dirs(path)[0].parent == tmp_path / "cache" and not (tmp_path / "d.jsonl.vindex").exists()


def test_the_dataset_holds_no_records(tmp_path):
    """What a spawned worker receives, and what a forked one can dirty: offsets, not records."""
    path = tmp_path / "d.json"
    path.write_text(json.dumps([record(i) for i in range(3000)]))
    small, big = LlavaDataset(str(path)), LlavaDataset(str(path), in_memory=True)
    assert len(pickle.dumps(small)) < 2000 < 100_000 < len(pickle.dumps(big))
    clone = pickle.loads(pickle.dumps(small))
    assert clone.read_text(2999).id == "r2999" and clone[5].where == f"{path}[5]"


def test_forked_workers_read_the_index(tmp_path):
    import torch

    path = tmp_path / "d.json"
    path.write_text(json.dumps([record(i, image=False) for i in range(200)]))
    dataset = LlavaDataset(str(path))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, num_workers=2, collate_fn=lambda b: [s.id for s in b])
    assert sorted(i for batch in loader for i in batch) == sorted(f"r{i}" for i in range(200))


def test_victor_data_index_builds_and_reports(tmp_path, capsys):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([record(i) for i in range(4)]))
    main(["data", "index", str(path)])
    assert f"{path}: 4 records (json), index {tmp_path / 'd.json.vindex'}" in capsys.readouterr().out
    assert IndexedFile(path).count == 4
    (tmp_path / "bad.json").write_text('[{"x": ')
    with pytest.raises(SystemExit) as exit_:
        main(["data", "index", str(tmp_path / "bad.json")])
    assert exit_.value.code == 2 and "bad.json" in capsys.readouterr().err
    os.remove(path)


@pytest.mark.slow
def test_victor_bench_data_memory_runs_and_prints_its_table(tmp_path, capsys):
    """The bench behind the README's memory table, at a toy size (fresh processes, 1 worker)."""
    main(["bench", "data", "memory", "--records", "300", "--workers", "1", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "data memory per rank, 1 DataLoader workers" in out
    assert [line.split()[0] for line in out.splitlines()[3:]] == ["index", "memory"]
    assert (tmp_path / "captions-300.json.vindex" / "meta.json").is_file()


def _open_and_read(path):
    dataset = LlavaDataset(path)
    return len(dataset), dataset.read_text(len(dataset) - 1).id


@pytest.mark.slow
def test_ranks_opening_a_new_file_together_build_one_index(tmp_path):
    """What torchrun's ranks do on first use: one builds under the lock, the others wait and reuse."""
    import multiprocessing

    path = tmp_path / "d.json"
    path.write_text(json.dumps([record(i) for i in range(20000)]))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_open_and_read, [str(path)] * 2)
    assert results == [(20000, "r19999")] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.json.vindex", "d.json.vindex.lock"]
