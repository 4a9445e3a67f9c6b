"""The shape of the code (issue 22): `python -m bench.shape`.

Prints the largest classes and functions of service/ (lines from `def`/`class` to their last line),
the functions that take the most arguments (besides self/cls; keyword-only ones count, as ruff's
PLR0913 counts them), and the sleeps in tests/ (`asyncio.sleep(` and `time.sleep(` calls). `make lint`
holds the argument limit (ruff PLR0913, max 5) and tests/unit/test_shape.py the class limit (200).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from bench.common import ROOT

SLEEP = re.compile(r"\b(asyncio|time)\.sleep\(")


class Measure(NamedTuple):
    size: int
    where: str


def _definitions(root: Path) -> Iterator[tuple[Path, ast.AST]]:
    for path in sorted((root / "service").rglob("*.py")):
        if "gen" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            yield path.relative_to(root), node


def classes(root: Path = ROOT) -> list[Measure]:
    """Every class of service/ by its length in lines, longest first."""
    found = [
        Measure(node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}")
        for path, node in _definitions(root)
        if isinstance(node, ast.ClassDef) and node.end_lineno is not None
    ]
    return sorted(found, reverse=True)


def functions(root: Path = ROOT) -> tuple[list[Measure], list[Measure]]:
    """Every function of service/ by its length in lines, and by its arguments, largest first."""
    lengths, arguments = [], []
    for path, node in _definitions(root):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.end_lineno is None:
            continue
        where = f"{path}:{node.lineno} {node.name}"
        lengths.append(Measure(node.end_lineno - node.lineno + 1, where))
        names = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
        arguments.append(Measure(len(names) - (names[:1] in (["self"], ["cls"])), where))
    return sorted(lengths, reverse=True), sorted(arguments, reverse=True)


def sleeps(root: Path = ROOT) -> list[str]:
    """Each `asyncio.sleep(` or `time.sleep(` in tests/, as path:line."""
    return [
        f"{path.relative_to(root)}:{number}"
        for path in sorted((root / "tests").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SLEEP.search(line)
    ]


def main() -> None:
    lengths, arguments = functions()
    largest = classes()
    found = sleeps()
    print("largest classes:", *(f"  {m.size:4d} lines  {m.where}" for m in largest[:5]), sep="\n")
    print("largest functions:", *(f"  {m.size:4d} lines  {m.where}" for m in lengths[:5]), sep="\n")
    print("most arguments:", *(f"  {m.size:4d}        {m.where}" for m in arguments[:5]), sep="\n")
    print(f"classes over 200 lines: {sum(m.size > 200 for m in largest)}")
    print(f"functions over 5 arguments: {sum(m.size > 5 for m in arguments)}")
    print(f"sleeps in tests: {len(found)} ({sum('operation' in where for where in found)} in operations tests)")


if __name__ == "__main__":
    main()
