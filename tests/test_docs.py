"""The documentation stays true: docs/config.md is generated from the Config docstrings,
the README stays short, and every relative link in README.md and docs/ leads to a file."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT
from jaxlm.config import Config

README = REPO_ROOT / "README.md"
README_MAX_LINES = 250


def load_generator():
    """scripts/gen_config_doc.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_config_doc", REPO_ROOT / "scripts" / "gen_config_doc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def test_config_doc_is_generated_from_the_current_config():
    expected = gen.generate()
    current = gen.CONFIG_DOC.read_text(encoding="utf-8")
    assert current == expected, "docs/config.md is out of date: run `uv run python scripts/gen_config_doc.py`"


def test_every_config_field_has_a_docstring():
    fields = gen.config_fields(gen.CONFIG_PY.read_text(encoding="utf-8"))
    assert [f.name for f in fields] == [f.name for f in dataclasses.fields(Config)]
    undocumented = [f.name for f in fields if not f.doc]
    assert not undocumented, f"Config fields without a docstring in jaxlm/config/fields.py: {', '.join(undocumented)}"


def test_the_generator_reads_types_defaults_docstrings_and_sections():
    source = '''
class Config:
    # --- first ---
    a: Safe[int] = 3
    """The a."""
    b: Identity[Literal["x", "y"] | None] = None
    """Two
    lines | one pipe."""

    # --- second ---
    c: float = 1e-8
'''
    a, b, c = gen.config_fields(source)
    assert (a.name, a.type, a.default, a.doc, a.section, a.resume) == ("a", "int", "3", "The a.", "first", "safe")
    assert (b.type, b.default, b.doc, b.resume) == ('`"x"`, `"y"` or null', "null", "Two lines | one pipe.", "identity")
    assert (c.default, c.doc, c.section, c.resume) == ("1e-08", None, "second", "?")  # no role: config.py refuses it
    text = gen.render([a, b])
    assert (
        "## First\n" in text and '| `b` | `"x"`, `"y"` or null | `null` | identity | Two lines \\| one pipe. |' in text
    )


def test_check_flags_a_stale_doc(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "config.md"
    stale.write_text(gen.generate().replace("Tokens per training window.", "Tokens per window."), encoding="utf-8")
    monkeypatch.setattr(gen, "CONFIG_DOC", stale)
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of date" in err
    stale.write_text(gen.generate(), encoding="utf-8")
    assert gen.main(["--check"]) == 0


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/ (limit {README_MAX_LINES})"


def markdown_files() -> list[Path]:
    return [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]


def relative_links(text: str) -> list[str]:
    """Targets of `[text](target)` links that point into the repository (code blocks and spans left out)."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)  # fenced code blocks
    text = re.sub(r"^(?: {4}|\t).*$", "", text, flags=re.M)  # indented code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans
    targets = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t, flags=re.I)]


def test_the_link_finder_skips_code_urls_and_anchors():
    text = "[a](docs/x.md#y) [b](https://e.org) [c](#top) `[d](no.md)`\n\n    [e](no2.md)\n```\n[f](no3.md)\n```\n"
    assert relative_links(text) == ["docs/x.md#y"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_point_at_files_that_exist(path):
    broken = []
    for target in relative_links(path.read_text(encoding="utf-8")):
        file_part = target.split("#", 1)[0]
        if not (path.parent / file_part).resolve().exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO_ROOT)} links to missing files: {', '.join(broken)}"
