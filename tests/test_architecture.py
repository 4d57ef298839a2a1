"""The package's shape, read from the code: imports go one way between packages, no module
imports itself back through others (no import cycles, not even inside functions), and every
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


def module_name(path: Path, package: Path) -> str:
    """`victor.demo.report` for victor/demo/report.py; a package's `__init__.py` is the package."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path, package: Path, modules: set[str]) -> list[tuple[int, str]]:
    """(line, module inside the package) of every import in the file, at any depth (functions
    included), relative ones resolved: `from victor.demo import declared` imports the module
    `victor.demo.declared`, `from victor.eval import BENCHMARKS` the package `victor.eval`."""
    me = module_name(path, package)
    here = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import victor.x.y` names a module, or an attribute of one
                target = target.rpartition(".")[0]
            if target and target != me:
                found.append((node.lineno, target))
    return found


def import_cycles(package: Path = ROOT / "victor") -> list[str]:
    """One cycle per group of modules that import each other, each as `a -> b -> a` with the
    lines of the imports that close it."""
    files = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {m: {} for m in files}
    for module, path in files.items():
        for line, target in module_imports(path, package, set(files)):
            graph[module][target] = min(line, graph[module].get(target, line))
    reach = {m: set() for m in graph}  # modules reachable from each one
    for start in graph:
        todo = list(graph[start])
        while todo:
            m = todo.pop()
            if m not in reach[start]:
                reach[start].add(m)
                todo += graph[m]
    cycles, seen = [], set()
    for start in sorted(graph):
        if start in seen or start not in reach[start]:
            continue
        group = {m for m in reach[start] if start in reach[m]}
        seen |= group
        path, came_from, todo = None, {start: None}, [start]  # shortest way round, within the group
        while todo and path is None:
            m = todo.pop(0)
            for nxt in sorted(graph[m]):
                if nxt == start:
                    path = [m]
                    while came_from[path[-1]] is not None:
                        path.append(came_from[path[-1]])
                    path = path[::-1]
                    break
                if nxt in group and nxt not in came_from:
                    came_from[nxt] = m
                    todo.append(nxt)
        ring = path + [start]
        where = ", ".join(f"{files[a].relative_to(package.parent)}:{graph[a][b]}" for a, b in zip(ring, ring[1:]))
        cycles.append(" -> ".join(ring) + f" ({where})" + (f"; with {', '.join(sorted(group - set(path)))}"
                                                          if group - set(path) else ""))
    return cycles


def test_no_import_cycles_between_modules():
    cycles = import_cycles()
    assert not cycles, "modules that import each other (move what both need into a module of its own):\n" + \
        "\n".join(cycles)


def test_the_cycle_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "victor" / "demo"
    pkg.mkdir(parents=True)
    (tmp_path / "victor" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "results.py").write_text("X = 1\n")
    (pkg / "figures.py").write_text("import os\nfrom victor.demo.report import Record\n")
    (pkg / "report.py").write_text("from .results import X\n\ndef write():\n    from . import figures\n")
    assert import_cycles(tmp_path / "victor") == [
        "victor.demo.figures -> victor.demo.report -> victor.demo.figures "
        "(victor/demo/figures.py:2, victor/demo/report.py:4)"]
    (pkg / "figures.py").write_text("from victor.demo.results import X\n")  # the fix: one way
    assert import_cycles(tmp_path / "victor") == []


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
