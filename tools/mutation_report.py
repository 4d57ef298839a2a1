"""Per-module mutation scores from a finished `mutmut run` (run from the repository root).

    python tools/mutation_report.py [--equivalent docs/equivalent_mutants.txt] [--diffs]

Reads `mutmut results --all true`, groups mutants by module, and prints a Markdown table
(killed, survived, timeout, no tests, score) and the surviving mutants. Mutants listed in the
equivalent file (one mutant name per line, `#` comments) are reported apart and left out of the
adjusted score: they cannot be killed because they do not change behaviour.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = ("killed", "timeout", "caught by type check")  # a test (or the timeout) noticed the mutant
LINE = re.compile(r"^\s*(\S+__mutmut_\d+): (.+?)\s*$")


def module_of(mutant: str) -> str:
    """`victor.model.comprehension.xǁVisualComprehensionǁforward__mutmut_3` -> `victor.model.comprehension`."""
    return re.split(r"\.x(?:ǁ|_)", mutant, maxsplit=1)[0]


def read_results(mutmut: str) -> dict[str, str]:
    out = subprocess.run([mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    return {m.group(1): m.group(2) for m in map(LINE.match, out.splitlines()) if m}


def read_equivalent(path: Path | None) -> set[str]:
    if path is None or not path.exists():
        return set()
    return {line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--equivalent", type=Path, default=Path("docs/equivalent_mutants.txt"))
    p.add_argument("--mutmut", default=str(Path(sys.executable).with_name("mutmut")))
    p.add_argument("--diffs", action="store_true", help="print each survivor's diff (mutmut show)")
    args = p.parse_args(argv)
    results = read_results(args.mutmut)
    if not results:
        print("no mutmut results: run `make mutation` (or `mutmut run`) first", file=sys.stderr)
        return 1
    equivalent = read_equivalent(args.equivalent)
    unknown = equivalent - results.keys()
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for mutant, status in sorted(results.items()):
        module = module_of(mutant)
        if mutant in equivalent:
            by_module[module]["equivalent"] += 1
            continue
        by_module[module][status] += 1
        if status not in KILLED:
            survivors[module].append(f"{mutant}: {status}")
    print("| module | mutants | killed | survived | no tests | timeout | equivalent | score | adjusted score |")
    print("|---|---|---|---|---|---|---|---|---|")
    for module, c in sorted(by_module.items()):
        total = sum(c.values())
        killed = sum(c[s] for s in KILLED)
        score = killed / total if total else 0.0
        adjusted = killed / (total - c["equivalent"]) if total > c["equivalent"] else 1.0
        print(f"| `{module}` | {total} | {killed} | {c['survived']} | {c['no tests']} | {c['timeout']} | "
              f"{c['equivalent']} | {100 * score:.1f}% | {100 * adjusted:.1f}% |")
    for module, names in sorted(survivors.items()):
        print(f"\n### Not killed: `{module}` ({len(names)})\n")
        for name in names:
            print(f"- `{name}`")
            if args.diffs:
                diff = subprocess.run([args.mutmut, "show", name.split(":")[0]], capture_output=True, text=True).stdout
                print("\n```diff\n" + diff.strip() + "\n```")
    if unknown:
        print(f"\nwarning: {len(unknown)} names in {args.equivalent} are not mutants of this run: "
              f"{', '.join(sorted(unknown)[:5])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
