"""`victor bench memory-scaling`: the sweep's columns, its fitted slopes, the doc section, and a
larger pool measuring a larger stage-1.5 peak (a check that fails if the measurement reads ~0)."""
import pytest

from victor.bench import doc_section
from victor.bench import memory_scaling as ms

TINY = dict(patch=14, image_size=112, vision_hidden=32, vision_layers=1, hidden=64, layers=1, pool=256, batch=1,
            answer_repeat=1)


def test_fit_recovers_known_slopes():
    rows = []
    for value in (512, 1024, 4096):
        rows.append({"factor": "pool", "value": value, "variant": "plain", "tensor_mib": 50.0})
        rows.append({"factor": "pool", "value": value, "variant": ms.STAGE15, "tensor_mib": 60.0 + 3.0 * value / 1000})
    for value in (1, 2, 4):
        rows.append({"factor": "batch", "value": value, "variant": "plain", "tensor_mib": 20.0 * value})
        rows.append({"factor": "batch", "value": value, "variant": ms.STAGE15, "tensor_mib": 25.0 * value + 1})
    fits = {f["factor"]: f for f in ms.fit_slopes(rows)}
    assert fits["pool"]["added"][0] == pytest.approx(3.0) and fits["pool"]["plain"][0] == pytest.approx(0.0, abs=1e-9)
    assert fits["pool"]["added"][1] == pytest.approx(10.0)
    assert fits["batch"]["stage15"][0] == pytest.approx(25.0) and fits["batch"]["added"][0] == pytest.approx(5.0)
    assert fits["pool"]["unit"] == "1000 pool rows" and fits["pool"]["points"] == 3


def test_shapes_and_doc_section(tmp_path):
    assert ms.visual_tokens(ms.shape_at(ms.BASE, "visual", 729)) == 729
    assert ms.shape_at(ms.BASE, "pool", 8192)["pool"] == 8192 and ms.BASE["pool"] == 2048
    with pytest.raises(ValueError, match="square"):
        ms.shape_at(ms.BASE, "visual", 100 + 1)
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nbody\n")
    doc_section.write_section(str(doc), "## Memory scaling\nfirst\n")
    doc_section.write_section(str(doc), "## Memory scaling\nsecond\n")  # replaces, does not append twice
    text = doc.read_text()
    assert text.startswith("# Performance\n\nbody\n") and "second" in text and "first" not in text
    assert text.count(doc_section.MARK_BEGIN) == 1
    assert doc_section.existing_section(str(doc)).endswith(doc_section.MARK_END + "\n")


def test_a_larger_pool_has_a_larger_tensor_peak():
    """In-process (the tensor column does not depend on the allocator's history): the pool's
    gradient, AdamW moments and the cost matrix grow the stage-1.5 peak, not the plain one."""
    small = ms.measure({"shape": TINY, "variant": ms.STAGE15})
    big = ms.measure({"shape": {**TINY, "pool": 8192}, "variant": ms.STAGE15})
    # bound: grad + two AdamW moments of the 7936 extra rows x 64 fp32 (5.8 MiB); measured +9.2 MiB (the
    # cost transient, 3 x 48 x pool x 4 B, adds the rest)
    assert big["tensor_mib"] - small["tensor_mib"] > 3 * 4 * 64 * (8192 - 256) / 2**20
    assert big["state_mib"] > small["state_mib"] and small["visual"] == 64


@pytest.mark.slow
def test_sweep_command_two_points(tmp_path):
    """The command itself: fresh processes, a 2-point pool sweep, slopes, the estimate check, the doc."""
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n")
    result = ms.main(["--pools", "256", "16384", "--visual", "--batches", "--base-visual", "64", "--base-hidden", "64",
                      "--base-layers", "1", "--base-vision-hidden", "32", "--base-batch", "1", "--base-pool", "256",
                      "--base-answer-repeat", "1", "--estimate-dtypes", "fp32", "--output", str(doc)])
    rows = {(r["variant"], r["value"]): r for r in result["rows"]}
    assert set(rows) == {(v, p) for v in ("plain", ms.STAGE15) for p in (256, 16384)}
    for r in rows.values():
        assert {"rss_mib", "tensor_mib", "weights_mib", "state_mib", "seq", "visual", "seconds"} <= set(r)

    def s15(pool):
        return rows[ms.STAGE15, pool]

    # 16128 extra rows x 64: grad + 2 moments = 11.8 MiB; measured +19.2 (tensor), +21.2 (RSS) MiB
    assert s15(16384)["tensor_mib"] - s15(256)["tensor_mib"] > 10
    assert s15(16384)["rss_mib"] - s15(256)["rss_mib"] > 10
    assert abs(rows["plain", 16384]["tensor_mib"] - rows["plain", 256]["tensor_mib"]) < 1  # plain has no pool
    fits = {(f["factor"], f["column"]): f for f in result["fits"]}
    assert fits["pool", "tensor_mib"]["added"][0] > 0.6  # MiB per 1000 rows
    text = doc.read_text()
    for column in ("stage 1.5 RSS MiB", "plain RSS MiB", "added RSS MiB", "stage 1.5 tensor MiB", "added tensor MiB",
                   "MiB per", "predicted / measured"):
        assert column in text
    assert [c["variant"] for c in result["checks"]] == ["plain", ms.STAGE15]
    assert all(0 < c["ratio_tensor"] < 10 for c in result["checks"])


def test_bench_all_report_keeps_the_section(tmp_path):
    """`victor bench all` rewrites docs/performance.md: the memory-scaling section survives it."""
    from victor.bench.suite import write_report

    doc = tmp_path / "performance.md"
    doc.write_text("# old report\n")
    doc_section.write_section(str(doc), "## Memory scaling\nkept table\n")
    write_report(str(doc), "cpu", {"fp32": 1.0}, [], {}, [], [], "victor bench all", 1.0)
    text = doc.read_text()
    assert "# old report" not in text and "kept table" in text and text.count(doc_section.MARK_END) == 1
