"""Check every quote of recipes/authors.yaml against local copies of the authors' repositories.

    python tools/check_authors.py --croc path/to/Croc --victor path/to/Victor [--facts recipes/authors.yaml]

A copy is a clone (work tree or bare git directory): each file is read at the commit the fact
names (`git show COMMIT:FILE`). A directory that is not a git repository is read as it is on
disk, and the table says so. For each fact: the quoted line must hold exactly the quoted text,
or, for an `absent:` fact, the file must not contain that text. Prints one row per fact and
exits 1 if any quote does not match (2 if a repository or commit is missing).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

FACTS = Path(__file__).resolve().parents[1] / "victor" / "recipes" / "authors.yaml"
REPOS = {"https://github.com/deepglint/Croc": "croc", "https://github.com/deepglint/Victor": "victor"}


@dataclass(frozen=True)
class Copy:
    path: Path
    git_dir: Path | None  # None: a plain directory, read from disk

    def read(self, commit: str, file: str) -> list[str] | None:
        if self.git_dir is None:
            target = self.path / file
            return target.read_text().splitlines() if target.is_file() else None
        done = subprocess.run(["git", "--git-dir", str(self.git_dir), "show", f"{commit}:{file}"],
                              capture_output=True, text=True)
        return done.stdout.splitlines() if done.returncode == 0 else None

    def has_commit(self, commit: str) -> bool:
        if self.git_dir is None:
            return False
        done = subprocess.run(["git", "--git-dir", str(self.git_dir), "cat-file", "-t", commit],
                              capture_output=True, text=True)
        return done.returncode == 0 and done.stdout.strip() == "commit"


def open_copy(path: Path) -> Copy:
    if not path.is_dir():
        raise SystemExit(f"{path}: no such directory")
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "--absolute-git-dir"], capture_output=True, text=True)
    return Copy(path, Path(done.stdout.strip()) if done.returncode == 0 else None)


def check(fact: dict, copy: Copy) -> tuple[bool, str]:
    """(ok, what was found) for one fact."""
    lines = copy.read(fact["commit"], fact["file"])
    if lines is None:
        return False, "file not found"
    if fact.get("absent") is not None:
        hits = [n for n, text in enumerate(lines, 1) if fact["absent"] in text]
        return (not hits, "absent" if not hits else f"present at line {hits[0]}")
    n = fact["line"]
    if not 1 <= n <= len(lines):
        return False, f"the file has {len(lines)} lines"
    if lines[n - 1] == fact["text"]:
        return True, "exact"
    elsewhere = [i for i, text in enumerate(lines, 1) if text == fact["text"]]
    return False, f"line {n} is {lines[n - 1]!r}" + (f"; the text is at line {elsewhere[0]}" if elsewhere else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--croc", type=Path, required=True, help="a copy of github.com/deepglint/Croc")
    parser.add_argument("--victor", type=Path, required=True, help="a copy of github.com/deepglint/Victor")
    parser.add_argument("--facts", type=Path, default=FACTS)
    args = parser.parse_args(argv)
    copies = {"croc": open_copy(args.croc), "victor": open_copy(args.victor)}
    facts = yaml.safe_load(args.facts.read_text())["facts"]

    for name, copy in copies.items():
        commits = sorted({f["commit"] for f in facts if REPOS[f["repo"]] == name})
        for commit in commits:
            if copy.git_dir is None:
                print(f"{name}: {copy.path} is not a git repository: files read from disk, not at {commit[:12]}")
            elif not copy.has_commit(commit):
                print(f"{name}: commit {commit} is not in {copy.path}")
                return 2

    rows, bad = [], 0
    for fact in facts:
        ok, found = check(fact, copies[REPOS[fact["repo"]]])
        bad += not ok
        where = f"{fact['file']}:{fact['line']}" if fact.get("line") else f"{fact['file']} (absent: {fact['absent']!r})"
        rows.append(("ok" if ok else "FAIL", fact["recipe"], ",".join(fact["stage"]), fact["setting"],
                     repr(fact["value"]), where, found))
    header = ("check", "recipe", "stage", "setting", "value", "where", "found")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"{len(facts) - bad} of {len(facts)} quotes match" + (f"; {bad} do not" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
