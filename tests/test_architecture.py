"""The package's shape: which room may import which (docs/architecture.md), and files that stay short."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "jaxlm"
COMMANDS = {"launch", "sweep", "runs", "compare", "generate", "evaluate", "export", "bench", "cli"}

# room -> the rooms it may import (besides itself); docs/architecture.md draws the same picture.
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "tracking": set(),
    "data": {"config", "errors"},
    "model": {"config", "errors"},
    "rundir": {"config", "errors", "tracking"},
    "runtime": {"errors", "data"},
    "train": {"config", "errors", "data", "model", "tracking", "rundir"},
    "api": {"config", "errors", "data", "model", "train", "rundir"},
    "commands": {"api", "config", "errors", "runtime", "rundir", "data", "model", "train", "tracking"},
}
MAX_LINES = 300  # of code: blank lines and documentation strings do not count


def room(module: str) -> str:
    """jaxlm.train.trainer -> "train"; jaxlm.launch -> "commands"; jaxlm -> "api" (the public functions)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    if parts[1] == "data" and parts[-1] == "__main__":
        return "commands"  # `python -m jaxlm.data` is a command that lives in its room
    if parts[1] in COMMANDS:
        return "commands"
    return parts[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def jaxlm_imports(source: str) -> list[str]:
    """Every jaxlm module an import statement names, at any depth (imports inside functions count)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jaxlm":
            if node.module == "jaxlm":  # `from jaxlm import launch` names the module launch
                found += [f"jaxlm.{a.name}" if a.name in COMMANDS else "jaxlm" for a in node.names]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "jaxlm"]
    return found


def violations(module: str, source: str) -> list[str]:
    """The imports of `module` (given its source) that go against ALLOWED, as readable lines."""
    here = room(module)
    bad = []
    for target in jaxlm_imports(source):
        there = room(target)
        if there == "commands" and here == "commands" and target != module:
            bad.append(f"{module} imports {target}: commands do not import each other")
        elif there != here and there not in ALLOWED[here]:
            bad.append(f"{module} ({here}) imports {target} ({there})")
    return bad


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "tinystories_sample" not in p.parts)


def test_imports_follow_the_allowed_directions():
    bad = [line for path in package_files() for line in violations(module_name(path), path.read_text())]
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def test_the_check_catches_a_wrong_import():
    assert violations("jaxlm.model.transformer", "from jaxlm.train.optim import build_optimizer")
    assert violations("jaxlm.tracking.plots", "def f():\n    import jaxlm.config")
    assert violations("jaxlm.sweep", "from jaxlm.launch import main")
    assert violations("jaxlm.sweep", "from jaxlm import launch")
    assert not violations("jaxlm.train.trainer", "from jaxlm.model.transformer import build_model")


def test_top_level_is_the_commands_and_a_few_core_modules():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == COMMANDS | {"__init__", "errors", "runtime", "rundir"}
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} == {
        "config",
        "model",
        "train",
        "data",
        "tracking",
    }


def code_lines(source: str) -> int:
    """Lines that are neither blank nor part of a documentation string (a string statement)."""
    doc = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            doc.update(range(node.lineno, node.end_lineno + 1))
    return sum(1 for i, line in enumerate(source.splitlines(), 1) if line.strip() and i not in doc)


def test_modules_stay_short():
    sizes = {p: code_lines(p.read_text()) for p in package_files()}
    long = [f"{p.relative_to(REPO_ROOT)}: {n}" for p, n in sizes.items() if n > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines (split them by job): " + ", ".join(long)
