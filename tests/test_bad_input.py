"""Bad input: one line on stderr, exit code 2, and nothing written or overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxlm import launch
from jaxlm.data.tokens import meta_path
from jaxlm.errors import EXIT_OK, EXIT_USAGE

TINY = {
    "vocab_size": 256,
    "context_length": 16,
    "d_model": 32,
    "num_layers": 1,
    "num_heads": 2,
    "d_ff": 64,
    "batch_size": 4,
    "max_iterations": 4,
    "cosine_cycle_iters": 4,
    "warmup_iters": 1,
    "log_interval": 2,
    "eval_interval": 2,
    "checkpoint_interval": 2,
    "eval_batches": 1,
}


def write_tokens(path: Path, n: int, vocab: int = 256, dtype=np.uint16, meta: dict | None = None) -> Path:
    tokens = np.random.default_rng(0).integers(0, vocab, n).astype(dtype)
    np.save(path, tokens)
    meta_path(path).write_text(
        json.dumps(meta or {"num_tokens": n, "num_bytes": 3 * n, "max_token_id": int(tokens.max())})
    )
    return path


@pytest.fixture
def data(tmp_path) -> dict[str, str]:
    return {
        "train_data_path": str(write_tokens(tmp_path / "train.npy", 5_000)),
        "val_data_path": str(write_tokens(tmp_path / "val.npy", 1_000)),
    }


@pytest.fixture(autouse=True)
def token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXLM_CACHE_DIR", str(tmp_path / "cache"))


def run(tmp_path: Path, config: dict, *args: str, name: str = "run", out: Path | None = None) -> int:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY, **config}))
    return launch.main(
        ["--config", str(path), "--name", name, "--output-dir", str(out or tmp_path / "runs"), "--quiet", *args]
    )


def assert_refused(code: int, capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE, err
    assert err.startswith("error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err
    return err


def test_missing_data_file(tmp_path, data, capsys):
    code = run(tmp_path, {**data, "val_data_path": str(tmp_path / "nope.npy")})
    assert_refused(code, capsys, "val_data_path", "nope.npy", "does not exist")
    assert not (tmp_path / "runs").exists()


def test_float_token_file(tmp_path, data, capsys):
    path = tmp_path / "floats.npy"
    np.save(path, np.zeros(5_000, np.float32))
    assert_refused(run(tmp_path, {**data, "train_data_path": str(path)}), capsys, "floats.npy", "float32", "integer")
    assert not (tmp_path / "runs").exists()


def test_token_id_beyond_vocab_is_found_in_the_file_whatever_its_metadata_says(tmp_path, data, capsys, monkeypatch):
    """In the last of several scan chunks, under metadata that claims a small max id; the scan's result is
    cached per version of the file, and a file rewritten in place is scanned again."""
    from jaxlm.data import token_check

    monkeypatch.setattr(token_check, "SCAN_TOKENS", 1_000)
    tokens = np.random.default_rng(0).integers(0, 256, 5_000).astype(np.uint16)
    path = tmp_path / "big.npy"
    np.save(path, np.append(tokens, 300))
    meta_path(path).write_text(json.dumps({"num_tokens": 5_001, "num_bytes": 15_000, "max_token_id": 10}))
    assert_refused(run(tmp_path, {**data, "train_data_path": str(path)}), capsys, "big.npy", "300", "vocab_size=256")
    assert not (tmp_path / "runs").exists()
    scans = []
    monkeypatch.setattr(token_check, "_scan", lambda t: scans.append(len(t)) or (0, 9))
    mapped = np.load(path, mmap_mode="r")
    assert token_check.token_range(mapped) == (0, 300) and not scans  # cached: nothing read
    np.save(path, np.append(tokens, 7))
    assert token_check.token_range(np.load(path, mmap_mode="r")) == (0, 9) and scans == [5_001]


def test_token_file_shorter_than_context(tmp_path, data, capsys):
    path = write_tokens(tmp_path / "short.npy", 16)
    assert_refused(run(tmp_path, {**data, "val_data_path": str(path)}), capsys, "short.npy", "context_length + 1")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text", [b"", b"  \n\t \n"])
def test_empty_or_whitespace_text(tmp_path, text, capsys):
    (tmp_path / "train.txt").write_bytes(text)
    (tmp_path / "val.txt").write_text("Once upon a time.\n")
    code = run(tmp_path, {"train_data_path": str(tmp_path / "train.txt"), "val_data_path": str(tmp_path / "val.txt")})
    assert_refused(code, capsys, "train.txt", "empty or whitespace")
    assert not (tmp_path / "runs").exists()


def test_text_not_utf8_says_where(tmp_path, capsys):
    (tmp_path / "train.txt").write_bytes(b"Once upon a time.\nThere was a \xff\xfe cat.\n")
    (tmp_path / "val.txt").write_text("Once upon a time.\n")
    code = run(tmp_path, {"train_data_path": str(tmp_path / "train.txt"), "val_data_path": str(tmp_path / "val.txt")})
    assert_refused(code, capsys, "train.txt", "not UTF-8", "byte 30", "line 2")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["a/b", "..", "has space", "semi;colon", "x\\y"])
def test_bad_run_name(tmp_path, data, name, capsys):
    assert_refused(run(tmp_path, data, name=name), capsys, "--name")
    assert not (tmp_path / "runs").exists()


def test_output_dir_not_writable(tmp_path, data, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_refused(run(tmp_path, data, out=blocker / "runs"), capsys, "--output-dir", "not a directory")
    assert blocker.read_text() == "not a directory"


def test_unwritable_output_dir_by_permission(tmp_path, data, capsys):
    import os

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if os.access(locked, os.W_OK) and os.geteuid() == 0:
            pytest.skip("running as root: permissions do not stop writes")
        assert_refused(run(tmp_path, data, out=locked / "runs"), capsys, "--output-dir", "cannot write")
    finally:
        locked.chmod(0o700)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished tiny run (checkpoints at steps 2 and 4) that the tests below copy."""
    tmp = tmp_path_factory.mktemp("trained")
    mp = pytest.MonkeyPatch()
    mp.setenv("JAXLM_CACHE_DIR", str(tmp / "cache"))
    data = {
        "train_data_path": str(write_tokens(tmp / "train.npy", 5_000)),
        "val_data_path": str(write_tokens(tmp / "val.npy", 1_000)),
    }
    assert run(tmp, data) == EXIT_OK
    mp.undo()
    return tmp / "runs" / "run"


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_existing_run_dir_is_refused_and_an_invalid_overwrite_leaves_it(tmp_path, trained, capsys):
    config = json.loads((trained / "config.json").read_text())
    config.pop("name")
    out = trained.parent
    before = snapshot(trained)
    assert_refused(run(tmp_path, config, out=out), capsys, "already exists", "--resume")
    # --overwrite with a config that does not validate leaves the old run alone
    assert_refused(run(tmp_path, {**config, "d_model": 30}, "--overwrite", out=out), capsys, "d_model")
    assert snapshot(trained) == before


@pytest.mark.slow
def test_overwrite_replaces_only_after_validation(tmp_path, trained, capsys):
    out = tmp_path / "runs"
    shutil.copytree(trained, out / "run")
    (out / "run" / "old-marker").write_text("x")
    config = {k: v for k, v in json.loads((trained / "config.json").read_text()).items() if k != "name"}
    assert run(tmp_path, {**config, "max_iterations": 2, "cosine_cycle_iters": 2}, "--overwrite") == EXIT_OK
    assert not (out / "run" / "old-marker").exists()
    assert json.loads((out / "run" / "summary.json").read_text())["steps"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["EXPERIMENT_LOG.md", "run"]  # nothing left aside


def test_resume_without_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "fresh"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"name": "fresh", **TINY}))
    code = launch.main(["--resume", str(run_dir), "--quiet"])
    assert_refused(code, capsys, "no checkpoint")
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


@pytest.mark.slow
def test_resume_refuses_unsafe_changes(tmp_path, trained, capsys):
    before = snapshot(trained)
    code = launch.main(["--resume", str(trained), "--quiet", "--set", "d_model=64", "--set", "max_iterations=8"])
    assert_refused(code, capsys, "'d_model'", "cannot change on --resume")
    assert_refused(
        launch.main(["--resume", str(trained), "--resume-step", "3", "--set", "max_iterations=8"]),
        capsys,
        "no checkpoint at step 3",
        "[2, 4]",
    )
    assert snapshot(trained) == before


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's other failed reads
def test_corrupt_checkpoint_names_step_and_older_choice(tmp_path, trained, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir)
    for f in (run_dir / "checkpoints" / "4" / "params").rglob("ocdbt.process_0/d/*"):
        data = bytearray(f.read_bytes())
        data[len(data) // 2 :] = bytes(b ^ 0xFF for b in data[len(data) // 2 :])
        f.write_bytes(data)
    before = snapshot(run_dir)
    code = launch.main(["--resume", str(run_dir), "--quiet", "--set", "max_iterations=6"])
    assert_refused(code, capsys, "step 4", "corrupt", "--resume-step", "[2]")
    assert snapshot(run_dir) == before
    # the older checkpoint still continues the run
    assert launch.main(["--resume", str(run_dir), "--resume-step", "2", "--quiet", "--set", "max_iterations=6"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] == 2 and summary["steps"] == 6
