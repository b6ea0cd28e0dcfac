"""Smoke tests: every `onthejob` subcommand runs as a real subprocess at toy scale."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from onthejob import knowledge
from onthejob.cli import _add_sleep_flags, add_shape_flags, main, shape_from_flags

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ONTHEJOB_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "onthejob.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_help_lists_only_working_subcommands(tmp_path):
    out = run_cli("--help", home=tmp_path)
    assert out.returncode == 0
    for name in ("pretrain", "train", "eval", "env-serve"):
        assert name in out.stdout


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    out = home / "toy"
    result = run_cli(
        "pretrain",
        "--tiny",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--quiet",
        home=home,
    )
    assert result.returncode == 0, result.stderr
    assert "pretrained model saved to" in result.stdout
    return home, out


def test_pretrain_writes_a_model_and_is_cached(toy_model):
    home, out = toy_model
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    again = run_cli("pretrain", "--tiny", "--out", str(out), home=home)
    assert again.returncode == 0 and "cached" in again.stdout


def test_eval_prints_the_table_and_writes_json(toy_model, tmp_path):
    home, out = toy_model
    scores = tmp_path / "scores.json"
    result = run_cli("eval", "--model", str(out), "--n", "2", "--json", str(scores), home=home)
    assert result.returncode == 0, result.stderr
    assert "context reading, with the document" in result.stdout
    record = json.loads(scores.read_text())
    assert set(record["scores"]) >= {
        "arith success (held-out, level 1)",
        "following a correction",
        "one-item documents (copying, no search)",
    }
    assert set(record["copying"]["by_answer"]) <= {
        *(relation.name for relation in knowledge.RELATIONS),
        "procedure",
        "convention",
    }
    assert all(0.0 <= v <= 1.0 for v in record["scores"].values())


def test_train_runs_grpo_and_prints_the_before_after_table(toy_model, tmp_path):
    home, model = toy_model
    out, run = tmp_path / "grpo", tmp_path / "run"
    result = run_cli(  # --resume with nothing to resume says so and starts at step 0
        "train", "--model", str(model), "--env", "arith,program,shop", "--steps", "2",
        "--batch-size", "6", "--group-size", "2", "--max-new-tokens", "8", "--eval-n", "2",
        "--out", str(out), "--run-dir", str(run), "--resume", "--quiet",
        home=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"--resume: no checkpoint in {run}; starting at step 0" in result.stdout
    assert f"model saved to {out}" in result.stdout
    assert "held-out success" in result.stdout and "program" in result.stdout
    assert (out / "config.json").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"pass_rate/arith", "pass_rate/program", "pass_rate/shop"} <= set(records[0])
    other = run_cli(  # the run's checkpoint is of another learning rate
        "train", "--model", str(model), "--env", "arith,program,shop", "--steps", "3",
        "--batch-size", "6", "--group-size", "2", "--max-new-tokens", "8", "--eval-n", "2",
        "--lr", "0.001", "--run-dir", str(run), "--resume", "--quiet",
        home=home,
    )  # fmt: skip
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1] == (  # after the loading bar
        f"onthejob train: --resume: {run} holds a run of another config; drop resume or pick"
        " another run dir"
    )


def test_train_with_lora_saves_an_adapter(toy_model, tmp_path):
    home, model = toy_model
    out = tmp_path / "adapter"
    result = run_cli(
        "train", "--model", str(model), "--env", "arith", "--steps", "1", "--batch-size", "4",
        "--group-size", "2", "--lora", "--lora-rank", "4", "--kl-coef", "0.05", "--eval-n", "0",
        "--out", str(out), "--run-dir", str(tmp_path / "run"), "--quiet",
        home=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "LoRA adapter saved to" in result.stdout
    assert (out / "adapter_config.json").is_file()


def test_train_flag_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """In-process (no training starts): each bad flag is one line on stderr, exit code 2."""
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path))  # no cached pretrained model here
    assert main(["train", "--batch-size", "10", "--group-size", "4"]) == 2
    assert capsys.readouterr().err == (
        "onthejob train: --batch-size must be a positive multiple of the group size (4), got 10\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--steps", "ten"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "--steps" in err
    assert main(["train", "--env", "arith"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.strip().endswith("run `onthejob pretrain` first")
    for command in ("train", "pretrain"):
        assert main([command, "--device", "gpu0"]) == 2
        assert capsys.readouterr().err == (
            f"onthejob {command}: unknown device 'gpu0': use cpu, cuda, cuda:1, ...\n"
        )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eval", "--n", "0"], "onthejob eval: argument --n: must be > 0, got 0"),
        (["eval", "--n", "x"], "onthejob eval: argument --n: must be an integer, got 'x'"),
        (["pretrain", "--steps", "0"], "onthejob pretrain: argument --steps: must be > 0, got 0"),
        (["serve", "--port", "99999"], "onthejob serve: argument --port: must be a port from 1"),
        (["env-serve", "arith", "--port", "-1"], "onthejob env-serve: argument --port: must be"),
        (["work", "--org", "-1"], "onthejob work: argument --org: must be >= 0, got -1"),
        (["sleep", "--org", "-2"], "onthejob sleep: argument --org: must be >= 0, got -2"),
        (["sleep", "--org", "1", "--guard-n", "0"], "onthejob sleep: argument --guard-n: must be > 0"),
        (["weeks", "--org", "abc"], "onthejob weeks: argument --org: must be an integer"),
    ],
)  # fmt: skip
def test_bad_numbers_in_flags_are_one_line_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(message)
    assert list(tmp_path.iterdir()) == []  # nothing was started or written


@pytest.mark.parametrize(
    "argv,what",
    [
        (["pretrain", "--tiny", "--out", "{blocked}/model"], "the folder of --out"),
        (["train", "--out", "{blocked}/model"], "the folder of --out"),
        (["train", "--run-dir", "{blocked}/run"], "--run-dir"),
        (["eval", "--json", "{blocked}/scores.json"], "the folder of --json"),
        (["work", "--org", "1", "--run-dir", "{blocked}/run"], "--run-dir"),
        (["weeks", "--org", "1", "--run-dir", "{blocked}/run"], "--run-dir"),
        (["weeks", "--compare", "{home}", "--out", "{blocked}/f.png"], "the folder of --out"),
    ],
)  # fmt: skip
def test_an_output_that_cannot_be_written_is_named_before_any_work(
    argv, what, tmp_path, monkeypatch, capsys
):
    """A path under a file cannot be a folder: the command says so and starts nothing, rather
    than failing at its end and losing the work."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ONTHEJOB_HOME", str(home))  # no model here: none is loaded first
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert main([a.format(blocked=blocked, home=home) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"onthejob {argv[0]}: cannot write {what} {blocked}")
    assert list(home.iterdir()) == []  # nothing was started or written


def test_eval_json_that_is_a_folder_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path))
    assert main(["eval", "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"onthejob eval: --json {tmp_path} is a folder; give a file name\n"
    )


def test_pretrain_shape_flags_set_the_model_and_a_bad_shape_is_one_line(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path))
    assert main(["pretrain", "--hidden", "100", "--heads", "8"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("onthejob pretrain: --hidden must be a multiple of 2 x num_heads (16)")
    assert main(["pretrain", "--heads", "8", "--kv-heads", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "onthejob pretrain: --kv-heads must be > 0 and a divisor of num_heads (8)"
    )
    assert list(tmp_path.iterdir()) == []  # nothing was started or written

    out = tmp_path / "shaped"
    argv = ["pretrain", "--tiny", "--steps", "2", "--batch-size", "2", "--out", str(out)]
    shape = ["--layers", "1", "--hidden", "32", "--heads", "2", "--kv-heads", "1"]
    shape += ["--ffn", "48", "--seed", "3"]
    assert main([*argv, *shape, "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"]) == (1, 32)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
    assert config["intermediate_size"] == 48
    assert json.loads((out / "pretrain_config.json").read_text())["seed"] == 3


def test_shape_flags_change_only_the_fields_given_over_any_base_shape():
    """The benchmarks parse the same flags over their larger shape."""
    from onthejob.models import TinyConfig
    from onthejob.train import ConfigError

    parser = argparse.ArgumentParser()
    add_shape_flags(parser)
    base = TinyConfig(hidden_size=256, num_layers=8, num_heads=8, num_kv_heads=2)
    assert shape_from_flags(parser.parse_args([]), base) == base
    shaped = shape_from_flags(parser.parse_args(["--layers", "2", "--heads", "4"]), base)
    assert (shaped.num_layers, shaped.num_heads, shaped.num_kv_heads) == (2, 4, 4)
    assert (shaped.hidden_size, shaped.intermediate_size) == (256, base.intermediate_size)
    with pytest.raises(ConfigError, match="^--kv-heads must be > 0 and a divisor"):
        shape_from_flags(parser.parse_args(["--kv-heads", "3"]), base)


def test_sleep_flag_choices_are_the_packages_own():
    """The CLI spells the choices out (it imports no trainer before a command runs); they
    must stay the package's lists."""
    from onthejob.sleep.run import METHODS
    from onthejob.train.opsd import DIVERGENCES, TEACHERS

    parser = argparse.ArgumentParser()
    _add_sleep_flags(parser)
    choices = {a.dest: tuple(a.choices) for a in parser._actions if a.choices is not None}
    assert set(choices["method"]) == set(METHODS)
    assert choices["teacher"] == TEACHERS
    assert choices["divergence"] == DIVERGENCES


def test_eval_names_an_unknown_env_or_level_before_loading_a_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ONTHEJOB_HOME", str(tmp_path))  # no model here: it is never loaded
    assert main(["eval", "--envs", "arith,nope"]) == 2
    assert capsys.readouterr().err == (
        "onthejob eval: unknown env nope in --envs; choose from arith, program, shop\n"
    )
    assert main(["eval", "--difficulty", "9"]) == 2
    assert capsys.readouterr().err.startswith("onthejob eval: --difficulty: arith difficulty must")


def test_eval_of_a_missing_model_is_a_one_line_error(tmp_path):
    result = run_cli("eval", "--model", str(tmp_path / "absent"), home=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"onthejob: model directory not found: {tmp_path / 'absent'} (train one with `onthejob pretrain`)"
    )


def test_env_serve_answers_over_http(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ONTHEJOB_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "onthejob.cli", "env-serve", "arith", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metadata", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        assert json.loads(body)["name"] == "arith"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
