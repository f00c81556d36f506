"""`python -m jaxlm.bench`: the JSON line, its FLOPs count and the --memory mode.

Tiny models only; no assertion is about speed (the numbers are checked for being
present and consistent with each other, not for being fast).
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import jax
import pytest
from flax import nnx

from helpers import REPO_ROOT, TINY_MODEL
from jaxlm import bench
from jaxlm.config import load_config
from jaxlm.data.memory_check import write_token_file
from jaxlm.data.tokens import open_tokens
from jaxlm.model.transformer import build_model
from jaxlm.train.flops import flops_per_token

KEYS = (
    "impl",
    "jax",
    "backend",
    "device_kind",
    "devices",
    "params",
    "batch_size",
    "context_length",
    "dtype",
    "compile_s",
    "step_ms",
    "tokens_per_sec",
    "gflops_per_sec",
    "mfu",
    "peak_gflops_per_sec",
    "peak_source",
    "final_loss",
    "flops_per_token",
)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(TINY_MODEL))
    return str(path)


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = bench.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bench_line(tiny_file, tmp_path_factory):
    """One real benchmark point of the tiny model, in this process (2 timed steps)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXLM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        code, out, _ = run_main(["--config", tiny_file, "--steps", "2", "--warmup", "1"])
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


def torch_reference_params(v: int, d: int, layers: int, f: int) -> int:
    """N as ../shared/bench/torch_reference.py's LM has it: embedding, per block q/k/v/o, w1/w3/w2 and two
    RMSNorm weights, the final norm and the untied head."""
    return v * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d + d * v


@pytest.mark.slow
def test_json_line_has_every_key_with_sane_values(bench_line):
    r = bench_line
    assert set(KEYS) <= set(r)
    assert (r["impl"], r["jax"], r["backend"]) == ("jaxlm", jax.__version__, jax.default_backend())
    assert r["devices"] == len(jax.devices()) and r["device_kind"]
    assert (r["batch_size"], r["context_length"], r["dtype"]) == (4, 32, "float32")
    assert r["compile_s"] > 0 and r["step_ms"] > 0
    tokens_per_step = r["batch_size"] * r["context_length"]
    assert r["tokens_per_sec"] == pytest.approx(tokens_per_step / (r["step_ms"] / 1e3), rel=1e-2)
    assert r["gflops_per_sec"] == pytest.approx(r["flops_per_token"] * r["tokens_per_sec"] / 1e9, rel=1e-2)
    if r["backend"] == "cpu":  # MFU against the matmul peak measured in the same process
        assert r["peak_source"] == "measured 2048^3 float32 matmul" and r["peak_gflops_per_sec"] > 0
        assert r["mfu"] == pytest.approx(r["gflops_per_sec"] / r["peak_gflops_per_sec"], rel=2e-2)
    assert math.isfinite(r["final_loss"]) and abs(r["final_loss"] - math.log(TINY_MODEL["vocab_size"])) < 1.5


@pytest.mark.slow
def test_flops_per_token_is_the_torch_reference_count(bench_line, tiny_config):
    r = bench_line
    t = TINY_MODEL
    assert r["params"] == torch_reference_params(t["vocab_size"], t["d_model"], t["num_layers"], t["d_ff"])
    assert r["flops_per_token"] == 6 * r["params"] + 12 * t["num_layers"] * t["context_length"] * t["d_model"]
    for name in ("quickstart", "tinystories_17m"):
        c = load_config(REPO_ROOT / "configs" / f"{name}.json")
        n = torch_reference_params(c.vocab_size, c.d_model, c.num_layers, c.ffn_dim)
        _, params = nnx.split(nnx.eval_shape(lambda c=c: build_model(c)), nnx.Param)
        assert sum(leaf.size for leaf in jax.tree.leaves(params)) == n  # the model jaxlm builds has N parameters
        assert flops_per_token(c) == 6 * n + 12 * c.num_layers * c.context_length * c.d_model


@pytest.mark.slow
def test_markdown_table_row(bench_line):
    table = bench.suite_table([bench_line]).splitlines()
    assert table[0].startswith("| config | batch | dtype | compile_s | step_ms | tokens/s | GFLOP/s | MFU |")
    assert table[2].startswith("| tiny | 4 | float32 |")
    assert table[2].count("|") == table[0].count("|")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--steps", "0"], "--steps: must be at least 1"),
        (["--warmup", "-1"], "--warmup: must be >= 0"),
        (["--set", "d_model=33"], "config key 'd_model'"),
        (["--dtype", "float32", "--memory", "--memory-big-mb", "0"], "--memory-big-mb: must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_file, argv, needle):
    code, out, err = run_main(["--config", tiny_file, *argv])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1


def test_suite_checks_its_configs_before_any_subprocess():
    code, out, err = run_main(["--suite", "--set", "num_heads=7"])
    assert code == 2 and out == "" and "config key" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()):
        bench.main(["--suite", "--config", "configs/quickstart.json"])
    assert e.value.code == 2


def test_token_file_is_read_by_the_real_loader(tmp_path):
    meta = write_token_file(tmp_path / "t.npy", 1, vocab_size=300)
    tf = open_tokens(tmp_path / "t.npy", 300, 32)
    assert len(tf.tokens) == meta["num_tokens"] == (1 << 20) // 2
    assert int(tf.tokens.max()) == meta["max_token_id"] < 300


@pytest.mark.slow
def test_memory_mode_reports_both_peaks(tiny_file, tmp_path):
    code, out, err = run_main(
        [
            "--memory",
            "--config",
            tiny_file,
            "--memory-big-mb",
            "64",
            "--memory-small-mb",
            "4",
            "--memory-dir",
            str(tmp_path),
        ]
    )
    assert code == 0, err
    line, verdict = out.strip().splitlines()
    r = json.loads(line)
    for label, mib in (("big", 64), ("small", 4)):
        assert r[f"{label}_steps_done"] == 20 and r[f"{label}_file_mb"] == mib
        assert r[f"{label}_peak_rss_mb"] > 0 and r[f"{label}_anon_rss_mb"] > 0
        assert r[f"{label}_token_file_rss_mb"] < 8  # batches are pread, so the file's pages are never mapped in
    assert r["diff_mb"] == pytest.approx(r["big_peak_rss_mb"] - r["small_peak_rss_mb"], abs=0.2)
    assert r["diff_mb"] < 200 and r["passed"] is True
    assert verdict.startswith("memory: PASS: peak RSS")
    assert list(tmp_path.iterdir()) == []  # token files and runs deleted (no --keep)
