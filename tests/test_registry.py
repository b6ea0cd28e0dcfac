"""The model registry: registering with checked paths, promote / reject / rollback rules,
one promoted version per tenant under concurrent callers, history, and `onthejob models`."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from onthejob.cli import main
from onthejob.registry import (
    SCHEMA_VERSION,
    Registry,
    RegistryError,
    UnknownVersion,
)

ROOT = Path(__file__).resolve().parents[1]


def fake_model_dir(path: Path) -> Path:
    """What check_model_dir looks for: config, weights, tokenizer (the registry never loads)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"")
    (path / "tokenizer.json").write_text("{}")
    return path


def fake_adapter_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


class FakeClock:
    def __init__(self) -> None:
        self.ticks = itertools.count(1000)

    def __call__(self) -> float:
        return float(next(self.ticks))


@pytest.fixture
def base(tmp_path):
    return fake_model_dir(tmp_path / "models" / "base")


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "registry.sqlite", clock=FakeClock())


def adapters(tmp_path: Path, n: int) -> list[Path]:
    return [fake_adapter_dir(tmp_path / "adapters" / f"a{i}") for i in range(n)]


def test_register_records_a_candidate_with_absolute_paths(registry, base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = registry.register("acme", "models/base", config={"note": "pretrained"})
    assert root.id == "acme-v1" and root.status == "candidate" and root.parent is None
    assert root.base == str(base.resolve()) and root.adapter is None
    assert root.method == "pretrain" and root.config == {"note": "pretrained"}
    assert root.created == 1000.0
    (adapter,) = adapters(tmp_path, 1)
    child = registry.register(
        "acme",
        base,
        adapter="adapters/a0",
        method="opsd",
        parent=root.id,
        evals={"recall": 0.4},
    )
    assert child.id == "acme-v2" and child.parent == "acme-v1"
    assert child.adapter == str(adapter.resolve()) and child.evals == {"recall": 0.4}
    other = registry.register("globex", base)
    assert other.id == "globex-v1"
    assert registry.get("acme-v2") == child
    assert registry.list() == [root, child, other]
    assert registry.list("acme") == [root, child]
    assert registry.promoted("acme") is None
    # An id chosen by hand is kept, and the automatic ids step around it.
    registry.register("acme", base, version_id="acme-v3")
    assert registry.register("acme", base).id == "acme-v4"
    with pytest.raises(RegistryError, match="already exists"):
        registry.register("acme", base, version_id="acme-v1")


@pytest.mark.parametrize(
    "case",
    [
        "missing base",
        "base without config",
        "base without weights",
        "missing adapter",
        "adapter without config",
        "adapter without weights",
        "unknown parent",
        "config not JSON",
        "bad tenant",
        "surrogate in config",
    ],
)
def test_bad_registrations_name_the_problem_and_write_nothing(registry, base, tmp_path, case):
    kwargs: dict = {}
    expected = ""
    if case == "missing base":
        kwargs["base"] = tmp_path / "nowhere"
        expected = "nowhere"
    elif case == "base without config":
        (base / "config.json").unlink()
        expected = "config.json"
    elif case == "base without weights":
        (base / "model.safetensors").unlink()
        expected = "weights"
    elif case == "missing adapter":
        kwargs["adapter"] = tmp_path / "no-adapter"
        expected = "no-adapter"
    elif case == "adapter without config":
        (adapter,) = adapters(tmp_path, 1)
        (adapter / "adapter_config.json").unlink()
        kwargs["adapter"] = adapter
        expected = "adapter_config.json"
    elif case == "adapter without weights":
        (adapter,) = adapters(tmp_path, 1)
        (adapter / "adapter_model.safetensors").unlink()
        kwargs["adapter"] = adapter
        expected = "adapter weights"
    elif case == "unknown parent":
        kwargs["parent"] = "acme-v9"
        expected = "unknown model version"
    elif case == "config not JSON":
        kwargs["config"] = {"f": object()}
        expected = "JSON"
    elif case == "bad tenant":
        kwargs["tenant"] = "two\nlines"
        expected = "tenant"
    elif case == "surrogate in config":
        kwargs["config"] = {"x": "\udc80"}
        expected = "Unicode"
    with pytest.raises(RegistryError, match=expected) as excinfo:
        registry.register(**{"tenant": "acme", "base": base, **kwargs})
    assert "\n" not in str(excinfo.value)
    assert registry.list() == []
    assert registry.history() == []


def test_promote_keeps_one_promoted_version_and_supersedes_the_previous(registry, base):
    v1 = registry.register("acme", base)
    v2 = registry.register("acme", base, method="opsd", parent=v1.id)
    g1 = registry.register("globex", base)
    registry.promote(g1.id)
    assert registry.promote(v1.id, reason="the pretrained model").status == "promoted"
    assert registry.promoted("acme") == registry.get(v1.id)
    promoted = registry.promote(v2.id, reason="gate passed", actor="gate")
    assert promoted.status == "promoted" and promoted.reason == "gate passed"
    assert registry.get(v1.id).status == "superseded"
    assert registry.get(v1.id).reason == f"superseded by {v2.id}"
    assert registry.promoted("acme").id == v2.id
    assert registry.promoted("globex").id == g1.id  # other tenants are untouched
    with pytest.raises(RegistryError, match="already promoted"):
        registry.promote(v2.id)
    history = registry.history("acme")
    assert [(h["version"], h["from"], h["to"]) for h in history] == [
        (v1.id, None, "candidate"),
        (v2.id, None, "candidate"),
        (v1.id, "candidate", "promoted"),
        (v1.id, "promoted", "superseded"),
        (v2.id, "candidate", "promoted"),
    ]
    assert history[-1]["reason"] == "gate passed" and history[-1]["actor"] == "gate"
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)
    assert registry.history(version_id=v1.id) == [h for h in history if h["version"] == v1.id]
    with pytest.raises(UnknownVersion):
        registry.promote("acme-v99")


def test_reject_needs_a_reason_and_never_hits_the_promoted_version(registry, base):
    v1 = registry.register("acme", base)
    v2 = registry.register("acme", base)
    registry.promote(v1.id)
    rejected = registry.reject(v2.id, "forgot arithmetic (guard 0.31 < 0.40)", actor="gate")
    assert rejected.status == "rejected" and rejected.reason.startswith("forgot")
    with pytest.raises(RegistryError, match="already rejected"):
        registry.reject(v2.id, "again")
    with pytest.raises(RegistryError, match="roll it back"):
        registry.reject(v1.id, "bad")
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.reject(registry.register("acme", base).id, "")
    # An operator may still promote a rejected version; the history says who did.
    assert registry.promote(v2.id, reason="override", actor="ops").status == "promoted"
    assert registry.history(version_id=v2.id)[-1]["actor"] == "ops"


def test_rollback_walks_back_through_the_promotions(registry, base):
    v1, v2, v3, v4 = (registry.register("acme", base) for _ in range(4))
    with pytest.raises(RegistryError, match="no promoted version"):
        registry.rollback("acme")
    for v in (v1, v2, v3):
        registry.promote(v.id)
    registry.reject(v2.id, "found a regression later")  # superseded, then rejected
    restored = registry.rollback("acme", reason="users complain", actor="ops")
    assert restored.id == v1.id  # v2 is skipped: it was rejected since
    assert (
        restored.status == "promoted" and restored.reason == f"rollback of {v3.id}: users complain"
    )
    assert registry.get(v3.id).status == "rolled_back"
    assert registry.get(v3.id).reason == "users complain"
    assert registry.get(v4.id).status == "candidate"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("acme")
    assert registry.promoted("acme").id == v1.id  # the failed rollback changed nothing
    # Promote v4 and roll back: v1 (promoted again by the first rollback) comes back.
    registry.promote(v4.id)
    assert registry.rollback("acme").id == v1.id
    statuses = {v.id: v.status for v in registry.list("acme")}
    assert statuses == {
        v1.id: "promoted",
        v2.id: "rejected",
        v3.id: "rolled_back",
        v4.id: "rolled_back",
    }


def test_record_evals_merges(registry, base):
    v = registry.register("acme", base, evals={"recall": 0.2})
    v = registry.record_evals(v.id, {"guard": {"arith": 0.5}, "recall": 0.6})
    assert v.evals == {"recall": 0.6, "guard": {"arith": 0.5}}
    assert registry.get(v.id).evals == v.evals
    with pytest.raises(RegistryError):
        registry.record_evals(v.id, {"x": float("inf")})
    with pytest.raises(UnknownVersion):
        registry.record_evals("nope", {})


def test_concurrent_promotions_leave_exactly_one_promoted(tmp_path, base):
    path = tmp_path / "registry.sqlite"
    versions = [Registry(path).register("acme", base).id for _ in range(8)]
    errors: list[BaseException] = []

    def promote(version_id: str) -> None:
        try:
            for _ in range(5):
                Registry(path).promote(version_id)
        except RegistryError as e:
            if "already promoted" not in str(e):
                errors.append(e)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    statuses = [v.status for v in Registry(path).list("acme")]
    assert statuses.count("promoted") == 1
    assert statuses.count("superseded") == 7
    # Every promotion event except the last was followed by its superseding.
    history = Registry(path).history("acme")
    promotions = sum(h["to"] == "promoted" for h in history)
    assert sum(h["to"] == "superseded" for h in history) == promotions - 1


def test_the_database_refuses_a_second_promoted_version(registry, base):
    v1 = registry.register("acme", base)
    v2 = registry.register("acme", base)
    registry.promote(v1.id)
    conn = sqlite3.connect(registry.path)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute("UPDATE versions SET status = 'promoted' WHERE id = ?", (v2.id,))
    conn.close()


def test_a_registry_from_newer_code_is_refused(tmp_path):
    path = tmp_path / "registry.sqlite"
    Registry(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(RegistryError, match="newer than this code"):
        Registry(path)
    with pytest.raises(RegistryError, match="directory"):
        Registry(tmp_path)


# -- onthejob models -------------------------------------------------------------------


def test_models_subcommands(tmp_path, base, capsys):
    path = str(tmp_path / "registry.sqlite")
    (adapter,) = adapters(tmp_path, 1)

    assert main(["models", "list", "--registry", path]) == 0
    assert "no model versions yet" in capsys.readouterr().out
    assert main(["models", "show", "acme-v1", "--registry", path]) == 2
    assert "no registry" in capsys.readouterr().err

    assert (
        main(["models", "register", "--tenant", "acme", "--base", str(base), "--registry", path])
        == 0
    )
    assert "registered acme-v1" in capsys.readouterr().out
    argv = ["models", "register", "--tenant", "acme", "--base", str(base), "--registry", path]
    argv += ["--adapter", str(adapter), "--method", "opsd", "--parent", "acme-v1"]
    assert main([*argv, "--config", '{"lr": 0.001}']) == 0
    capsys.readouterr()

    assert main(["models", "promote", "acme-v1", "--registry", path]) == 0
    assert main(["models", "promote", "acme-v2", "--reason", "gate", "--registry", path]) == 0
    assert "promoted acme-v2 for tenant acme" in capsys.readouterr().out

    assert main(["models", "list", "--tenant", "acme", "--registry", path]) == 0
    out = capsys.readouterr().out
    assert "acme-v1" in out and "superseded" in out and "acme-v2" in out and "opsd" in out

    assert main(["models", "show", "acme-v2", "--registry", path]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "promoted" and shown["config"] == {"lr": 0.001}
    assert shown["adapter"] == str(adapter.resolve()) and shown["parent"] == "acme-v1"
    assert [h["to"] for h in shown["history"]] == ["candidate", "promoted"]
    assert shown["history"][-1]["actor"].startswith("cli")

    assert (
        main(["models", "rollback", "--tenant", "acme", "--reason", "bad", "--registry", path]) == 0
    )
    assert "acme-v1 is promoted again" in capsys.readouterr().out
    assert Registry(path).promoted("acme").id == "acme-v1"

    for argv in (
        ["models", "show", "acme-v9"],
        ["models", "promote", "acme-v9"],
        ["models", "rollback", "--tenant", "acme"],  # nothing left to roll back to
        ["models", "register", "--tenant", "acme", "--base", str(tmp_path / "none")],
        ["models", "register", "--tenant", "acme", "--base", str(base), "--config", "{oops"],
    ):
        assert main([*argv, "--registry", path]) == 2
        err = capsys.readouterr().err
        assert err.startswith("onthejob models: ") and err.count("\n") == 1
    with pytest.raises(SystemExit) as excinfo:
        main(["models", "rollback", "--registry", path])  # --tenant is required
    assert excinfo.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_models_list_runs_as_a_subprocess_with_the_default_registry(tmp_path, base):
    env = {**os.environ, "ONTHEJOB_HOME": str(tmp_path / "home")}
    Registry(tmp_path / "home" / "registry.sqlite").register("acme", base)
    out = subprocess.run(
        [sys.executable, "-m", "onthejob.cli", "models", "list"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "acme-v1" in out.stdout and "candidate" in out.stdout
