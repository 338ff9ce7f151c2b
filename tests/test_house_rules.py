"""House rules that a tool can check, so that they hold by more than memory (docs/CONTRACT.md):

- library code speaks Python: no ``--flag`` text in the messages of src/mobilenets outside commands/ and cli.py
  (a Python caller never typed a flag; the CLI's flags take the parameters' names, so one message fits both);
- test modules are not libraries: shared helpers live in conftest.py fixtures or in the helper modules at tests/'s
  root (checks.py, synthetic_data.py, ...), never in a ``test_*.py`` that another test imports.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mobilenets"
TESTS = Path(__file__).resolve().parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _docstring_nodes(tree: ast.AST) -> set[int]:
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return docs


def flag_strings(source: str) -> list[tuple[int, str]]:
    """(line, flag) for every ``--flag`` inside a string literal of ``source`` that is not a docstring."""
    tree = ast.parse(source)
    docs = _docstring_nodes(tree)
    return sorted((node.lineno, flag) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            for flag in FLAG.findall(node.value))


def test_the_scan_finds_flags_in_messages_and_skips_docstrings():
    source = ('"""Module doc: --width is fine here."""\n'
              'def f(n):\n'
              '    """Doc: --batch too."""\n'
              '    raise ValueError(f"--batch {n} must be at least 1")  # a comment --epochs\n'
              'x = "a-b --c" + "foo--bar"\n')
    assert flag_strings(source) == [(4, "--batch"), (5, "--c")]


def test_library_messages_name_parameters_not_flags():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("commands/") or rel == "cli.py":
            continue
        found += [f"src/mobilenets/{rel}:{line} {flag}" for line, flag in flag_strings(path.read_text())]
    assert not found, "flag text in library messages (name the Python parameter instead):\n" + "\n".join(found)


def test_no_test_module_is_imported_by_another():
    modules = {p.stem for p in TESTS.rglob("test_*.py")}
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(TESTS)}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[-1] in modules]
    assert not found, "shared test helpers belong in conftest.py or a helper module:\n" + "\n".join(found)


def test_the_marker_lists_name_files_that_exist():
    """conftest.py marks files ``numerics`` (the lowered-ISA pass reruns them) and ``slow`` by name: a renamed or
    moved file must not drop out of the lowered pass unnoticed."""
    from conftest import NUMERICS, SLOW

    present = {p.name for p in TESTS.rglob("test_*.py")}
    assert NUMERICS | SLOW <= present, f"not found: {sorted((NUMERICS | SLOW) - present)}"
