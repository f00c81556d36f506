"""The guard that fails the suite when a test writes into the checkout (conftest's
`no_debris_in_the_working_tree`): it sees what a stray test would leave, and not the caches."""

from __future__ import annotations

import subprocess

from helpers import working_tree_paths


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_new_ignored_and_untracked_paths_are_seen_caches_and_edits_are_not(tmp_path):
    repo = tmp_path / "repo"
    (repo / "runs").mkdir(parents=True)
    (repo / ".gitignore").write_text("runs/*\n!runs/.gitkeep\n__pycache__/\n")
    (repo / "runs" / ".gitkeep").write_text("")
    (repo / "README.md").write_text("hello\n")
    (repo / "jaxlm").mkdir()
    (repo / "jaxlm" / "__init__.py").write_text("")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (repo / "notes.txt").write_text("mine, untracked, there before\n")
    before = working_tree_paths(repo)
    assert before == {"notes.txt"}
    (repo / "runs" / "t").mkdir()  # what tests/train/test_sharding.py used to leave
    (repo / "runs" / "t" / "tokenizer.json").write_text("{}")
    (repo / "comparison.png").write_bytes(b"png")
    (repo / "README.md").write_text("changed\n")  # an edit while the tests run
    (repo / "notes.txt").write_text("edited\n")
    (repo / "jaxlm" / "__pycache__").mkdir()
    (repo / "jaxlm" / "__pycache__" / "x.pyc").write_bytes(b"")
    assert sorted(working_tree_paths(repo) - before) == ["comparison.png", "runs/t/"]


def test_outside_a_git_checkout_there_is_no_state(tmp_path):
    assert working_tree_paths(tmp_path) is None
