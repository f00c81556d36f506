"""Full evaluation (`python -m jaxlm.evaluate`, jaxlm.train.full_eval): every prediction of a file exactly
once, the training loop's eval loss on the same windows, the records it writes, and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from helpers import REPO_ROOT, TINY_MODEL
from jaxlm import evaluate, launch
from jaxlm.train.full_eval import read_eval_batch, window_count

T = TINY_MODEL["context_length"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 4-step run on synthetic tokens (no tokenizer), checkpoints at steps 2 and 4, final_eval "full"."""
    root = tmp_path_factory.mktemp("full-eval")
    rng = np.random.default_rng(0)
    np.save(root / "train.npy", rng.integers(0, 64, size=4000).astype(np.uint16))
    np.save(root / "valid.npy", rng.integers(0, 64, size=1000).astype(np.uint16))
    cfg = root / "tiny.json"
    values = dict(TINY_MODEL, vocab_size=64, max_iterations=4, eval_interval=2, checkpoint_interval=2, warmup_iters=1)
    values["final_eval"] = "full"
    values.update(train_data_path=str(root / "train.npy"), val_data_path=str(root / "valid.npy"))
    cfg.write_text(json.dumps(values))
    args = [
        "--config",
        str(cfg),
        "--output-dir",
        str(root / "runs"),
        "--quiet",
        "--experiment-log",
        str(root / "LOG.md"),
    ]
    assert launch.main(args) == 0
    return root / "runs" / "tiny"


@pytest.mark.parametrize("n", [2, 3, T, T + 1, T + 2, 4 * T + 1, 5 * T - 3, 9 * T + 7])
@pytest.mark.parametrize("contiguous", [True, False])
def test_windows_cover_every_prediction_once(n, contiguous):
    tokens = np.arange(n, dtype=np.uint16) % 50000 + 1  # never 0, so padding is told apart
    batch = 3
    rows = slice(0, batch) if contiguous else np.arange(batch)
    windows = window_count(n, T)
    predicted_inputs, predicted = [], []
    for b in range(-(-windows // batch)):
        x, y, mask = read_eval_batch(tokens, None, b, batch, T, rows)
        assert x.shape == y.shape == mask.shape == (batch, T)
        predicted_inputs += list(x[mask > 0])
        predicted += list(y[mask > 0])
    assert predicted == list(tokens[1:])  # N - 1 predictions, in order, none twice
    assert predicted_inputs == list(tokens[:-1])  # each predicted from the token before it


@pytest.mark.slow
def test_loss_equals_the_training_loops_eval_loss(tiny_config, tmp_path):
    """A validation file of exactly eval_batches x batch_size windows: the training loop's eval windows
    are the full evaluation's windows, so the losses agree."""
    from jaxlm.train.full_eval import evaluate_tokens
    from jaxlm.train.trainer import Trainer

    c = tiny_config(vocab_size=64, eval_batches=3, batch_size=4)
    rng = np.random.default_rng(1)
    np.save(tmp_path / "train.npy", rng.integers(0, 64, size=3000).astype(np.uint16))
    val = rng.integers(0, 64, size=3 * 4 * T + 1).astype(np.uint16)
    np.save(tmp_path / "valid.npy", val)
    import dataclasses

    c = dataclasses.replace(c, train_data_path=str(tmp_path / "train.npy"), val_data_path=str(tmp_path / "valid.npy"))
    trainer = Trainer(c)
    expected = trainer.evaluate()["val_loss"]
    tokens = np.load(tmp_path / "valid.npy", mmap_mode="r")
    result = evaluate_tokens(
        tokens, trainer.graphdef, trainer.params, trainer.layout, batch_size=4, context_length=T, vocab_size=64
    )
    assert result.tokens == len(val) - 1 and result.windows == 12
    assert result.loss == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_partial_last_window_is_masked_not_dropped(tiny_config):
    """The full evaluation's loss equals the per-token NLL averaged over every prediction, computed
    window by window without padding."""
    from jaxlm.model.transformer import build_model
    from jaxlm.train.full_eval import evaluate_tokens
    from jaxlm.train.sharding import Layout, build_mesh

    c = tiny_config(vocab_size=64, batch_size=2)
    model = build_model(c)
    graphdef, params = nnx.split(model, nnx.Param)
    layout = Layout.for_mesh(build_mesh(c), params, None)
    tokens = np.random.default_rng(2).integers(0, 64, size=5 * T + 10).astype(np.uint16)  # 5 full windows + 9
    result = evaluate_tokens(tokens, graphdef, params, layout, batch_size=2, context_length=T, vocab_size=64)
    nll = []
    for start in range(0, len(tokens) - 1, T):
        w = jax.numpy.asarray(tokens[start : start + T + 1][None].astype(np.int32))
        logits = model(w[:, :-1])
        nll += list(
            np.asarray(jax.nn.logsumexp(logits, -1) - jax.numpy.take_along_axis(logits, w[:, 1:, None], -1)[..., 0])[0]
        )
    assert len(nll) == len(tokens) - 1 == result.tokens
    assert result.loss == pytest.approx(float(np.mean(nll)), rel=1e-5)


@pytest.mark.slow
def test_cli_evaluates_n_minus_1_tokens_and_records_them(tiny_run, tmp_path, capsys):
    log = tmp_path / "LOG.md"
    code = evaluate.main(["--run", str(tiny_run), "--checkpoint", "latest", "--experiment-log", str(log), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    record = json.loads((tiny_run / "evals" / "val-4.json").read_text())
    assert record["tokens"] == 999 and record["file_tokens"] == 1000 and record["step"] == 4
    assert record["windows"] == math.ceil(999 / T)
    assert record["perplexity"] == pytest.approx(math.exp(record["loss"]))
    assert record["bpb"] is None  # a bare .npy has no byte count
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["evals"]["val-4"]["loss"] == record["loss"] and summary["status"] == "completed"
    assert "999 predictions" in out and "val-4" in out
    assert "evaluated" in log.read_text() and "val-4.json" in log.read_text()
    # the same checkpoint on other data, by step number, with another window length: its own key
    other = tmp_path / "other.npy"
    np.save(other, np.arange(77, dtype=np.uint16) % 64)
    args = ["--run", str(tiny_run), "--checkpoint", "2", "--data", str(other), "--context-length", "8"]
    assert evaluate.main([*args, "--no-experiment-log", "--quiet"]) == 0
    assert json.loads((tiny_run / "evals" / "other-2.json").read_text())["tokens"] == 76
    assert set(json.loads((tiny_run / "summary.json").read_text())["evals"]) == {"val-4", "other-2"}


@pytest.mark.slow
def test_final_eval_full_puts_the_full_numbers_in_the_final_row_and_summary(tiny_run, capsys):
    summary = json.loads((tiny_run / "summary.json").read_text())
    last = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and last["full_val_tokens"] == summary["full_val_tokens"] == 999
    assert last["full_val_loss"] == summary["full_val_loss"] and "val_loss" in last  # the sample stays too
    assert summary["final_val_loss"] == last["val_loss"] != summary["full_val_loss"]
    assert "full validation set (999 tokens)" in (tiny_run.parent.parent / "LOG.md").read_text()
    earlier = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()[:-1]]
    assert not any("full_val_loss" in row for row in earlier)  # only the final evaluation
    assert evaluate.main(["--run", str(tiny_run), "--checkpoint", "latest", "--quiet", "--no-experiment-log"]) == 0
    record = json.loads((tiny_run / "evals" / "val-4.json").read_text())
    assert record["loss"] == pytest.approx(summary["full_val_loss"], rel=1e-6)


def exit_code(argv: list[str]) -> int:
    """The command's exit code, whether `main` returns it or argparse exits with it."""
    try:
        return evaluate.main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--checkpoint", "7"], "no checkpoint at step 7"),
        (["--checkpoint", "worst"], "--checkpoint"),
        (["--data", "missing.npy"], "does not exist"),
        (["--data", "notes.csv"], "neither a .npy"),
        (["--data", "big_ids.npy"], "vocab_size"),
        (["--data", "one.npy"], "shorter"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--context-length", "x"], "invalid int"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_run, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.csv").write_text("a,b\n")
    np.save(tmp_path / "big_ids.npy", np.array([1, 2, 300, 4], dtype=np.uint16))
    np.save(tmp_path / "one.npy", np.array([1], dtype=np.uint16))
    before = sorted(p.name for p in tiny_run.rglob("*"))
    summary = (tiny_run / "summary.json").read_text()
    assert exit_code(["--run", str(tiny_run), "--no-experiment-log", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert sorted(p.name for p in tiny_run.rglob("*")) == before
    assert (tiny_run / "summary.json").read_text() == summary


def test_not_a_run_is_exit_2(tmp_path, capsys):
    assert evaluate.main(["--run", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: --run")


@pytest.mark.slow
def test_sharded_over_two_devices_gives_the_same_loss(tiny_run, tmp_path):
    """The same evaluation on a 2-device mesh (batch split over devices) matches one device."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "jaxlm.evaluate", "--run", str(tiny_run), "--checkpoint", "2", "--quiet"]
        + ["--batch-size", "6", "--no-experiment-log"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    two = json.loads((tiny_run / "evals" / "val-2.json").read_text())
    assert two["device_count"] == 2 and two["tokens"] == 999
    assert evaluate.main(["--run", str(tiny_run), "--checkpoint", "2", "--quiet", "--no-experiment-log"]) == 0
    one = json.loads((tiny_run / "evals" / "val-2.json").read_text())
    assert one["device_count"] == 1
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
