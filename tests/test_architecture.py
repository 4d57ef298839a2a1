"""The package's shape, read from the code: imports go one way between packages, and every
private Trainer method VictorTrainer overrides is listed in docs/architecture.md with a reason."""
import ast
import re
from pathlib import Path

from transformers import Trainer

from victor.train.trainer import VictorTrainer

ROOT = Path(__file__).resolve().parent.parent
LAYER = {"config": 0, "data": 1, "model": 2, "train": 3, "eval": 3, "infer": 3, "tiny": 4, "serve": 4,
         "bench": 5, "demo": 5, "cli": 6}


def package_of(path: Path, package: Path = ROOT / "victor") -> str:
    return path.relative_to(package).with_suffix("").parts[0]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, victor package) of every import in the file, at any depth (functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        found += [(node.lineno, n.split(".")[1]) for n in names if n.startswith("victor.") and n.count(".") >= 1]
    return found


def wrong_directions(package: Path = ROOT / "victor") -> list[str]:
    wrong = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == package:
            continue
        src = package_of(path, package)
        for line, dst in imports(path):
            if dst != src and not LAYER[dst] < LAYER[src]:
                wrong.append(f"{path.relative_to(package.parent)}:{line} imports victor.{dst} ({src} -> {dst})")
    return wrong


def test_every_package_is_in_a_layer():
    packages = {package_of(p) for p in (ROOT / "victor").rglob("*.py")} - {"__init__"}
    assert packages <= set(LAYER), sorted(packages - set(LAYER))


def test_imports_go_one_way_between_packages():
    assert wrong_directions() == []


def test_the_import_check_sees_imports_inside_functions(tmp_path):
    (tmp_path / "victor" / "model").mkdir(parents=True)
    (tmp_path / "victor" / "model" / "planted.py").write_text(
        "import victor.config\n\ndef f():\n    from victor.train.checkpoint import rotate\n    return rotate\n")
    assert wrong_directions(tmp_path / "victor") == ["victor/model/planted.py:4 imports victor.train (model -> train)"]


def listed_private_overrides() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Private Trainer methods victor overrides", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^- `(_\w+)`: \S", section, re.M))


def test_every_private_trainer_override_is_listed_with_a_reason():
    overridden = {name for name in vars(VictorTrainer)
                  if name.startswith("_") and not name.startswith("__") and hasattr(Trainer, name)}
    listed = listed_private_overrides()
    assert overridden - listed == set(), f"private Trainer overrides not listed in docs/architecture.md: {overridden - listed}"
    assert listed - overridden == set(), f"listed but no longer overridden: {listed - overridden}"
    assert not {"_save_checkpoint", "_get_output_dir"} & overridden  # checkpoints complete through a callback


def test_eval_help_lists_every_benchmark_and_the_scoring_choices(capsys):
    import pytest

    from victor.cli import main
    from victor.eval.registry import BENCHMARKS

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    for name in BENCHMARKS:
        assert f"\n  {name} " in text, name
    assert "MMBench TSV" in text and "POPE annotation JSONL" in text and "likelihood" in text
