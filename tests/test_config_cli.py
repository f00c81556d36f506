"""Config loading, `--set` typing and every config error through the real CLI:
exit code 2, one line on stderr naming the key, nothing written."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, TINY_MODEL
from jaxlm import launch
from jaxlm.config import Config, build_config, load_config, parse_override
from jaxlm.errors import EXIT_USAGE, ConfigError, UserError


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m jaxlm.launch ...` in a fresh process (config errors never import JAX: ~0.2 s)."""
    return subprocess.run(
        [sys.executable, "-m", "jaxlm.launch", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def write_config(path: Path, **overrides) -> Path:
    path.write_text(json.dumps({**TINY_MODEL, **overrides}, indent=2))
    return path


# (config file overrides, key the message must name, extra text the message must hold)
FILE_ERRORS = {
    "unknown_key": ({"d_modle": 64}, "d_modle", "did you mean 'd_model'"),
    "wrong_type_str_for_int": ({"d_model": "big"}, "d_model", "expected int"),
    "wrong_type_float_for_int": ({"batch_size": 2.5}, "batch_size", "expected int"),
    "wrong_type_bool_for_int": ({"num_layers": True}, "num_layers", "expected int"),
    "wrong_type_for_float": ({"learning_rate": "fast"}, "learning_rate", "expected float"),
    "null_for_required": ({"vocab_size": None}, "vocab_size", "null"),
    "bad_choice": ({"dtype": "float16"}, "dtype", "float32"),
    "zero_d_model": ({"d_model": 0}, "d_model", "positive"),
    "negative_batch": ({"batch_size": -4}, "batch_size", "positive"),
    "zero_context": ({"context_length": 0}, "context_length", "positive"),
    "zero_layers": ({"num_layers": 0}, "num_layers", "positive"),
    "zero_vocab": ({"vocab_size": 0}, "vocab_size", "positive"),
    "zero_iterations": ({"max_iterations": 0, "warmup_iters": 0}, "max_iterations", "positive"),
    "zero_d_ff": ({"d_ff": 0}, "d_ff", "positive"),
    "negative_lr": ({"learning_rate": -1.0, "min_learning_rate": 0.0}, "learning_rate", "positive"),
    "heads_do_not_divide": ({"d_model": 30, "num_heads": 4}, "d_model", "divisible"),
    "odd_head_dim_with_rope": ({"d_model": 30, "num_heads": 10}, "num_heads", "even"),
    "warmup_past_end": ({"warmup_iters": 50, "max_iterations": 20}, "warmup_iters", "max_iterations"),
    "min_lr_above_lr": ({"learning_rate": 1e-3, "min_learning_rate": 1e-2}, "min_learning_rate", "learning_rate"),
}


def assert_usage_error(code: int, stderr: str, key: str, *needles: str) -> str:
    lines = stderr.strip().splitlines()
    assert code == EXIT_USAGE
    assert len(lines) == 1, stderr
    assert f"'{key}'" in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(FILE_ERRORS))
def test_config_file_errors_in_process(case, tmp_path, capsys):
    overrides, key, needle = FILE_ERRORS[case]
    cfg = write_config(tmp_path / "bad.json", **overrides)
    out = tmp_path / "out"
    code = launch.main(["--config", str(cfg), "--output-dir", str(out)])
    assert_usage_error(code, capsys.readouterr().err, key, needle)
    assert not out.exists()


@pytest.mark.parametrize("case", ["unknown_key", "odd_head_dim_with_rope", "min_lr_above_lr"])
def test_config_file_errors_in_a_subprocess(case, tmp_path):
    overrides, key, needle = FILE_ERRORS[case]
    write_config(tmp_path / "bad.json", **overrides)
    proc = run_cli(["--config", "bad.json"], cwd=tmp_path)  # default --output-dir: runs/ under cwd
    assert_usage_error(proc.returncode, proc.stderr, key, needle)
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]  # no runs/, no run dir


def test_invalid_json_names_the_line(tmp_path):
    cfg = tmp_path / "broken.json"
    cfg.write_text('{\n  "d_model": 64,\n  "num_heads": 4\n  "num_layers": 2\n}\n')  # missing comma on line 3
    proc = run_cli(["--config", "broken.json", "--output-dir", "out"], cwd=tmp_path)
    line = assert_usage_error(proc.returncode, proc.stderr, str(Path("broken.json")), "line 4")
    assert "JSON" in line
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path):
    proc = run_cli(["--config", "nowhere.json", "--output-dir", "out"], cwd=tmp_path)
    assert_usage_error(proc.returncode, proc.stderr, "nowhere.json", "does not exist")
    assert not (tmp_path / "out").exists()


def test_top_level_must_be_an_object(tmp_path, capsys):
    (tmp_path / "list.json").write_text("[1, 2]")
    assert launch.main(["--config", str(tmp_path / "list.json"), "--output-dir", str(tmp_path / "out")]) == EXIT_USAGE
    assert "JSON object" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- --set overrides


@pytest.mark.parametrize(
    "override,key,needle",
    [
        ("d_modle=64", "d_modle", "did you mean 'd_model'"),
        ("d_model=abc", "d_model", "cannot parse"),
        ("d_model=12.5", "d_model", "expected int"),
        ("num_heads=5", "d_model", "divisible"),
        ("warmup_iters=21", "warmup_iters", "max_iterations=20 (for a short try, lower it too: --set warmup_iters=2)"),
        ("dtype=fp8", "dtype", "float32"),
    ],
)
def test_bad_set_overrides(override, key, needle, tmp_path, capsys):
    cfg = write_config(tmp_path / "ok.json")
    out = tmp_path / "out"
    code = launch.main(["--config", str(cfg), "--output-dir", str(out), "--set", override])
    assert_usage_error(code, capsys.readouterr().err, key, needle)
    assert not out.exists()


def test_set_without_equals_sign(tmp_path, capsys):
    cfg = write_config(tmp_path / "ok.json")
    assert launch.main(["--config", str(cfg), "--output-dir", str(tmp_path / "o"), "--set", "d_model"]) == EXIT_USAGE
    assert "key=value" in capsys.readouterr().err


def test_set_overrides_are_typed_by_field(tmp_path):
    cfg = write_config(tmp_path / "ok.json", device="cpu")
    c = load_config(
        cfg,
        [
            "d_model=64",
            "learning_rate=1e-3",
            "min_learning_rate=1e-4",
            "device=null",
            "tie_embeddings=true",
            "description=two words",
            "rope_theta=500",
            "d_ff=null",
        ],
    )
    assert c.d_model == 64 and isinstance(c.d_model, int)
    assert c.learning_rate == 1e-3 and isinstance(c.learning_rate, float)
    assert c.rope_theta == 500.0 and isinstance(c.rope_theta, float)
    assert c.device is None and c.d_ff is None and c.ffn_dim == 192  # CS336 default: 8/3 d rounded to 64
    assert c.tie_embeddings is True
    assert c.description == "two words"
    assert parse_override("sample_prompt=a=b") == ("sample_prompt", "a=b")  # only the first '=' splits


def test_later_overrides_win_and_file_values_load(tmp_path):
    cfg = write_config(tmp_path / "ok.json", seed=5)
    c = load_config(cfg, ["seed=6", "seed=7"])
    assert c.seed == 7 and c.vocab_size == TINY_MODEL["vocab_size"]
    assert build_config({}) == Config()  # every field has a valid default


def test_config_is_frozen(tiny_config):
    c = tiny_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.d_model = 128  # type: ignore[misc]


def test_config_errors_are_user_errors():
    with pytest.raises(ConfigError) as e:
        build_config({"num_heads": 3, "d_model": 64})
    assert isinstance(e.value, UserError) and "'d_model'" in str(e.value)


# ---------------------------------------------------------------- names, run directories, --dry-run


def test_bad_run_name_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path / "ok.json")
    assert (
        launch.main(["--config", str(cfg), "--output-dir", str(tmp_path / "out"), "--name", "../escape"]) == EXIT_USAGE
    )
    assert "--name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()


def test_existing_run_directory_is_refused_and_left_alone(tmp_path, capsys):
    cfg = write_config(tmp_path / "ok.json")
    run_dir = tmp_path / "out" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "keep.txt").write_text("mine")
    assert launch.main(["--config", str(cfg), "--output-dir", str(tmp_path / "out"), "--name", "taken"]) == EXIT_USAGE
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in run_dir.iterdir()] == ["keep.txt"]


def test_missing_data_file_exits_2_before_writing(tmp_path, capsys):
    cfg = write_config(
        tmp_path / "ok.json", train_data_path=str(tmp_path / "no.npy"), val_data_path=str(tmp_path / "no.npy")
    )
    assert launch.main(["--config", str(cfg), "--output-dir", str(tmp_path / "out")]) == EXIT_USAGE
    assert "'train_data_path'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dry_run_on_tinystories_17m_reports_about_17m_non_embedding_params(tmp_path):
    proc = run_cli(
        ["--config", str(REPO_ROOT / "configs" / "tinystories_17m.json"), "--dry-run", "--output-dir", "out"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"parameters: ([\d,]+) total, ([\d,]+) non-embedding", proc.stdout)
    assert m, proc.stdout
    total, non_embedding = (int(g.replace(",", "")) for g in m.groups())
    # 4 x (4*512^2 attention + 3*512*1344 SwiGLU + 2*512 norms) + 512 final norm + 10000*512 LM head
    assert non_embedding == 17_576_448
    assert total == non_embedding + 10_000 * 512
    assert re.search(r"FLOPs per token \(train\): [\d,]+", proc.stdout)
    assert "total: 327,680,000" in proc.stdout  # batch x steps x context = 327.68M training tokens
    resolved = json.loads(proc.stdout[proc.stdout.index("{") : proc.stdout.rindex("}") + 1])
    assert resolved["vocab_size"] == 10000 and resolved["d_ff"] == 1344 and resolved["context_length"] == 256
    assert resolved["train_data_path"] == "data/tinystories/train.npy"
    missing = "data: train_data_path 'data/tinystories/train.npy': MISSING; make it with: "
    assert missing + "python -m jaxlm.data download tinystories --dir data/raw && python -m jaxlm.data prepare" in (
        proc.stdout
    )
    assert "--vocab-size 10000 --out data/tinystories" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


@pytest.mark.parametrize("year, seconds", [(2025, 5400), (2026, 2700)])
def test_dry_run_of_a_leaderboard_config_sizes_it_for_both_gpus(tmp_path, capsys, year, seconds):
    """The GPU config sized on a machine without the GPU (device=null): parameters, memory against an 80 GB
    and a 180 GB GPU, and the steps its budget holds at the stated tokens/s."""
    config = REPO_ROOT / "configs" / f"leaderboard_{year}.json"
    argv = ["--config", str(config), "--set", "device=null", "--dry-run", "--output-dir", str(tmp_path)]
    assert launch.main(argv) == 0
    out = capsys.readouterr().out
    resolved = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert (resolved["context_length"], resolved["vocab_size"], resolved["dtype"]) == (512, 32000, "bfloat16")
    assert resolved["optimizer"] == "muon" and resolved["final_eval"] == "full"
    assert resolved["max_wallclock_seconds"] == seconds and resolved["schedule_by"] == "wallclock"
    assert re.search(r"of an 80 GB GPU \(H100\), \d+% of a 180 GB GPU \(B200\)", out), out
    for gpu in ("H100", "B200"):
        m = re.search(
            rf"budget {seconds} s on one {gpu} at 40% of its bf16 peak: ([\d,]+) tokens/s, about ([\d,]+) steps", out
        )
        tokens_s, steps = (int(g.replace(",", "")) for g in m.groups())
        assert steps == int(tokens_s * seconds / (64 * 512)) or abs(steps - tokens_s * seconds / 32768) < 2
    assert list(tmp_path.iterdir()) == []


def test_dry_run_shows_overrides_and_description(tmp_path, capsys):
    cfg = write_config(tmp_path / "ok.json")
    code = launch.main(
        [
            "--config",
            str(cfg),
            "--dry-run",
            "--set",
            "d_model=64",
            "--description",
            "probe",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "run: ok" in out  # --name defaults to the config file's stem
    assert '"d_model": 64' in out and '"description": "probe"' in out
    assert not (tmp_path / "out").exists()


def test_dry_run_estimate_times_a_probe_step_and_a_missing_file_names_its_command(tmp_path, capsys):
    cfg = write_config(tmp_path / "ok.json", max_iterations=1000, eval_interval=100)
    args = ["--config", str(cfg), "--output-dir", str(tmp_path / "out")]
    assert launch.main([*args, "--dry-run", "--estimate"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"estimate: ([\d,.]+) ms per step \(median of 3.*\) -> about [\d.]+ h \(([\d,]+) s\) for 1,000", out)
    assert m, out
    step_ms, total_s = (float(g.replace(",", "")) for g in m.groups())
    # the steps, and the 11 evaluations on top (the total is printed in whole seconds, the step to 0.1 ms)
    assert total_s + 0.5 >= 1000 * (step_ms - 0.05) / 1e3
    assert "data: train_data_path" in out and "present" in out  # the bundled sample
    assert not (tmp_path / "out").exists()
    assert launch.main([*args, "--estimate"]) == EXIT_USAGE  # only with --dry-run
    assert "--estimate" in capsys.readouterr().err

    npy = write_config(tmp_path / "npy.json", train_data_path="data/owt/train.npy", val_data_path="data/owt/valid.npy")
    assert launch.main(["--config", str(npy), "--output-dir", str(tmp_path / "out")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "make it with: python -m jaxlm.data download owt --dir data/raw" in err


# ---------------------------------------------------------------- the docs document every key and flag


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of the markdown tables in `text` whose first cell is code, keyed by that cell (backticks stripped)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if line.startswith("| `") and len(cells) >= 2:
            rows[cells[0].strip("`").split()[0]] = cells
    return rows


def readme_table_rows(heading: str) -> dict[str, list[str]]:
    """Table rows under `## heading` in README.md, keyed by the first cell (backticks stripped)."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return table_rows(text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0])


FIELDS_BY_NAME = {f.name: f for f in dataclasses.fields(Config)}


def test_config_doc_lists_every_key_with_its_default():
    """docs/config.md (generated from jaxlm/config.py's source) against the Config class itself."""
    rows = table_rows((REPO_ROOT / "docs" / "config.md").read_text(encoding="utf-8"))
    regenerate = "run `uv run python scripts/gen_config_doc.py`"
    missing = [name for name in FIELDS_BY_NAME if name not in rows]
    assert not missing, f"docs/config.md is missing keys: {', '.join(missing)} ({regenerate})"
    stale = [name for name in rows if name not in FIELDS_BY_NAME]
    assert not stale, f"docs/config.md lists keys Config does not have: {', '.join(stale)} ({regenerate})"
    wrong_default = [
        f"{name}: docs say {cells[2]}, Config has {json.dumps(FIELDS_BY_NAME[name].default)}"
        for name, cells in rows.items()
        if json.loads(cells[2].strip("`")) != json.loads(json.dumps(FIELDS_BY_NAME[name].default))  # tuples: lists
    ]
    assert not wrong_default, "docs/config.md defaults are stale: " + "; ".join(wrong_default)


def test_readme_documents_every_cli_flag_and_the_two_commands(tmp_path):
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "uv run python -m jaxlm.launch --config configs/quickstart.json" in text
    assert "uv run pytest" in text
    help_text = run_cli(["--help"], cwd=tmp_path).stdout
    parser_flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text)) - {"--help"}
    assert {"--config", "--set", "--dry-run"} <= parser_flags, help_text
    missing = sorted(parser_flags - set(readme_table_rows("Command line")))
    assert not missing, f"README.md 'Command line' table lacks flags: {', '.join(missing)}"
