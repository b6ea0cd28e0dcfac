"""weeks: the work-and-sleep loop, and how the served model's answers are sorted into
retained, updated and stale."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from onthejob import knowledge, weeks
from onthejob.registry import Registry
from onthejob.sleep import SleepConfig
from onthejob.store import Store
from onthejob.train.opsd import OPSDConfig
from onthejob.weeks import Taught, WeeksConfig, measure, run_weeks
from onthejob.world import OrgConfig, make_org
from onthejob.world.org import item_key

SMALL_ORG = OrgConfig(items=16, users=1, questions_per_day=1, orders_per_day=0)
"""One question a day: five sessions a week."""


@pytest.fixture(scope="module")
def model_dir(served_model_dir):
    return served_model_dir


QUICK_SLEEP = SleepConfig(
    opsd=OPSDConfig(steps=2, batch_size=4, samples_per_probe=2, max_new_tokens=8),
    guard_envs=("arith",),
    guard_n=2,
    replay={"arith": 2},
)


def _changed_and_unchanged(org):
    """A fact that week 1 changed and one it did not, as of week 0."""
    changed = {change.key for change in org.knowledge_at(1).changes}
    facts = [i for i in org.knowledge_at(0).items if isinstance(i, knowledge.Fact)]
    before = next(i for i in facts if item_key(i) in changed)
    same = next(i for i in facts if item_key(i) not in changed)
    after = next(i for i in org.knowledge_at(1).items if item_key(i) == item_key(before))
    return before, after, same


def test_measure_sorts_answers_into_retained_updated_and_stale(
    tmp_path,
    model_dir,
    monkeypatch,
):
    org = make_org(3)
    before, after, same = _changed_and_unchanged(org)
    asked_changed = knowledge.question(before, random.Random(0))
    asked_same = knowledge.question(same, random.Random(0))
    taught = [
        Taught(
            0, [(asked_same.text, asked_same.answer), (asked_changed.text, asked_changed.answer)]
        )
    ]
    registry = Registry(tmp_path / "registry.sqlite")
    registry.promote(registry.register(org.tenant, model_dir, method="base").id)

    def replying(*answers):
        monkeypatch.setattr(weeks, "answer_all", lambda *args: list(answers))

    replying(asked_same.answer, asked_changed.answer)  # remembers week 0 as it was
    result = measure(org, registry, taught, 1, "promoted", "", None, None, {})
    assert result.retention == {0: (1, 1)} and result.updated == (0, 1) and result.stale == 1
    replying("nobody", after.value)  # forgot the unchanged fact, knows the new value
    result = measure(org, registry, taught, 1, "promoted", "", None, None, {})
    assert result.retention == {0: (0, 1)} and result.updated == (1, 1) and result.stale == 0
    # in week 0 nothing had changed yet: both count as retention
    result = measure(org, registry, taught, 0, "promoted", "", None, None, {})
    assert result.retention == {0: (0, 2)} and result.updated == (0, 0)


def test_two_weeks_of_work_and_sleep_then_an_exam_week(tmp_path, model_dir):
    config = WeeksConfig(org_seed=4, weeks=2, org=SMALL_ORG, sleep=QUICK_SLEEP, exam=True)
    lines = []
    report = run_weeks(config, tmp_path, model_dir, log=lines.append)
    assert [w["week"] for w in report.weeks] == [0, 1]
    for week in report.weeks:
        after = week["after_sleep"]
        assert after["status"] in ("promoted", "rejected") and after["reason"]
        assert set(after["guard"]) == {"arith success"}
        assert week["work"]["sessions"] == 5
    # after the second sleep, both weeks' targets are asked
    assert set(report.weeks[1]["after_sleep"]["retention"]) <= {0, 1}
    assert sum(n for _, n in report.weeks[1]["after_sleep"]["retention"].values()) + report.weeks[
        1
    ]["after_sleep"]["updated"][1] > sum(
        n for _, n in report.weeks[0]["after_sleep"]["retention"].values()
    )
    assert report.exam is not None and report.exam["with_document"] == 0
    written = json.loads((tmp_path / "weeks.json").read_text())
    assert written["exam"] == report.exam and len(written["weeks"]) == 2
    assert (tmp_path / "weeks.png").stat().st_size > 10_000
    registry = Registry(tmp_path / "registry.sqlite")
    tenant = make_org(4, SMALL_ORG).tenant
    assert [v.method for v in registry.list(tenant)] == ["base", "opsd", "opsd"]
    with Store(tmp_path / "store.sqlite") as store:
        assert store.counts()["sessions"] == 15  # three weeks
    assert any(line.startswith("exam week") for line in lines)


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match="weeks must be 1 to 52"):
        WeeksConfig(weeks=0)
    assert replace(WeeksConfig(), weeks=2).weeks == 2


def test_weeks_command_errors_are_one_line(tmp_path, capsys):
    from onthejob.cli import main

    assert main(["weeks", "--weeks", "0", "--run-dir", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == "onthejob weeks: weeks must be 1 to 52, got 0"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "store.sqlite").write_text("")
    assert main(["weeks", "--run-dir", str(tmp_path / "b")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (
        main(["weeks", "--model", str(tmp_path / "nothing"), "--run-dir", str(tmp_path / "c")]) == 2
    )
    assert "no model at" in capsys.readouterr().err


def test_compare_plots_finished_runs_and_refuses_other_folders(tmp_path):
    for method, stale in (("opsd", 1), ("none", 0)):
        run = tmp_path / method
        run.mkdir()
        after = {
            "week": 0,
            "status": "promoted",
            "retention": {"0": [2, 4]},
            "updated": [0, 2],
            "stale": stale,
        }
        report = {
            "config": {"sleep": {"method": method}},
            "weeks": [{"week": 0, "after_sleep": after}],
            "exam": None,
        }
        (run / "weeks.json").write_text(json.dumps(report))
    rows = weeks.compare([tmp_path / "opsd", tmp_path / "none"], tmp_path / "c.png")
    assert [(r["method"], r["retained"], r["stale"]) for r in rows] == [
        ("opsd", [0.5], [0.5]),
        ("none", [0.5], [0.0]),
    ]
    assert (tmp_path / "c.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="no weeks.json"):
        weeks.compare([tmp_path], tmp_path / "d.png")
