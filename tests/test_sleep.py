"""onthejob.sleep: selection, teacher contexts, probes, the gate, tenants, and `onthejob sleep`.

The store is a real SQLite file filled the way the serving API fills it at work: sessions
of an org's users (`make_org`) whose user turns paste the org's documents
("my notes:\\n<document>\\n\\n<question>") and correct wrong answers
("no. <statement> <question>"), as `onthejob.world.users` does, with thumbs and written
evaluations, on a clock the test moves.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from onthejob import knowledge
from onthejob.cli import main
from onthejob.curriculum import available_tasks
from onthejob.knowledge import Convention, Fact, Procedure
from onthejob.models import build_model, load_model, save_model
from onthejob.prompts import (
    AGENT_SYSTEM,
    KNOWLEDGE_SYSTEM,
    SHOP_TOOL,
    TOOLS_HEADER,
    env_system,
    tool_line,
)
from onthejob.registry import Registry
from onthejob.sleep import (
    Asked,
    Experience,
    GateConfig,
    Note,
    PlanConfig,
    SelectionPolicy,
    SleepConfig,
    SleepError,
    SleepResult,
    decide,
    plan_sleep,
    read_experience,
    select_sessions,
    sleep,
    split_correction,
    student_messages,
)
from onthejob.sleep import run as sleep_run
from onthejob.sleep.gate import lineage_guard, no_context_recall
from onthejob.sleep.plan import SleepQuestion, replay_probes, spread
from onthejob.sleep.run import REPLAY, SLEEP_TOKENS, load_version
from onthejob.store import NewTurn, Store
from onthejob.train.opsd import OPSDConfig, probe_prompts, teacher_messages
from onthejob.train.sft import SFTConfig, SFTExample, sft
from onthejob.world import make_org
from onthejob.world.org import Org, item_key
from tests.conftest import TINY

ORG_A = make_org(3)
ORG_B = make_org(4)


class Clock:
    """A clock the test moves: every reading is one second later."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@dataclass
class Filled:
    """What was put into the store, to check the sleep against."""

    store: Path
    up: str
    """Session: document pasted, a question right, one wrong then corrected; thumb up."""
    down: str
    """Session: a question answered wrong, not corrected; thumb down, the evaluation says why."""
    order: str
    """A shop session (tools); thumb up."""
    silent: str
    """A question session without feedback."""
    late: str
    """A later session pasting next week's version of the document; thumb up, no evaluation."""
    other_tenant: str
    """Tenant B's session: its own document pasted; thumb up."""
    pasted_question: str
    corrected_question: str
    corrected_statement: str
    down_question: str
    down_answer: str
    split_at: float
    """A time after `up`, `down`, `order` and `silent` started and before `late`."""


def question_about(item: knowledge.Item, seed: int) -> knowledge.Question:
    return knowledge.question(item, random.Random(seed))


def fill(path: Path, org: Org = ORG_A, other: Org = ORG_B) -> Filled:
    clock = Clock()
    store = Store(path, clock=clock)
    week0 = org.knowledge_at(0)
    doc = week0.documents[0]
    user, second = org.users[0].name, org.users[1].name
    facts = [item for item in doc.items if isinstance(item, Fact)]
    pasted = question_about(facts[0], 1)
    corrected = question_about(facts[1], 2)
    statement = knowledge.statement(facts[1])
    outside = next(
        item for item in week0.items if all(item_key(item) != item_key(i) for i in doc.items)
    )
    down = question_about(outside, 4)

    up = store.start_session(org.tenant, user, {"kind": "question"}).id
    store.add_turns(
        up,
        [
            NewTurn("system", KNOWLEDGE_SYSTEM),
            NewTurn("user", f"my notes:\n{doc.text}\n\n{pasted.text}"),
            NewTurn("assistant", pasted.answer),
            NewTurn("user", corrected.text),
            NewTurn("assistant", "wrong"),
            NewTurn("user", f"no. {statement} {corrected.text}"),
            NewTurn("assistant", corrected.answer),
        ],
    )
    store.end_session(up)
    store.add_feedback(
        up, 1, f"2 of 2 tasks done.\nright: {pasted.text}", author=f"simulated:{user}"
    )

    down_id = store.start_session(org.tenant, second, {"kind": "question"}).id
    store.add_turns(
        down_id,
        [
            NewTurn("system", KNOWLEDGE_SYSTEM),
            NewTurn("user", down.text),
            NewTurn("assistant", "wrong"),
        ],
    )
    store.end_session(down_id)
    store.add_feedback(down_id, 1, None, author=f"simulated:{second}")  # changed their mind:
    store.add_feedback(
        down_id,
        -1,
        f"0 of 1 tasks done.\nwrong: {down.text} said wrong, it is {down.answer}.",
        author=f"simulated:{second}",
    )

    listing = tool_line("shop", SHOP_TOOL["function"]["description"], "arguments: action")
    order = store.start_session(org.tenant, user, {"kind": "order"}).id
    store.add_turns(
        order,
        [
            NewTurn("system", f"{AGENT_SYSTEM['shop']}\n{TOOLS_HEADER}\n{listing}"),
            NewTurn("user", "buy 1 red cotton shirt, at most 20 dollars each.\nsearch <words>"),
            NewTurn(
                "assistant", "shop: search red shirt", tool_calls=(("c0", "shop", '{"a": 1}'),)
            ),
            NewTurn("tool", "no results", tool_call_id="c0"),
        ],
    )
    store.add_feedback(order, 1, "order done.", author=f"simulated:{user}")

    silent = store.start_session(org.tenant, second, {"kind": "question"}).id
    store.add_turns(silent, [NewTurn("system", KNOWLEDGE_SYSTEM), NewTurn("user", pasted.text)])

    split_at = clock.now + 0.5
    week1 = org.knowledge_at(1)
    late = store.start_session(org.tenant, user, {"kind": "question"}).id
    store.add_turns(
        late,
        [
            NewTurn("system", KNOWLEDGE_SYSTEM),
            NewTurn("user", f"my notes:\n{week1.document(doc.id).text}\n\n{pasted.text}"),
        ],
    )
    store.add_feedback(late, 1, None, author=f"simulated:{user}")

    other_doc = other.knowledge_at(0).documents[0]
    other_question = question_about(other_doc.items[0], 5)
    theirs = store.start_session(other.tenant, other.users[0].name).id
    store.add_turns(
        theirs,
        [
            NewTurn("system", KNOWLEDGE_SYSTEM),
            NewTurn("user", f"my notes:\n{other_doc.text}\n\n{other_question.text}"),
        ],
    )
    store.add_feedback(theirs, 1, "fine.", author="simulated:x")
    store.close()
    return Filled(
        store=path,
        up=up,
        down=down_id,
        order=order,
        silent=silent,
        late=late,
        other_tenant=theirs,
        pasted_question=pasted.text,
        corrected_question=corrected.text,
        corrected_statement=statement,
        down_question=down.text,
        down_answer=down.answer,
        split_at=split_at,
    )


@pytest.fixture
def filled(tmp_path: Path) -> Filled:
    return fill(tmp_path / "store.sqlite")


def selected_ids(filled: Filled, **policy: object) -> list[str]:
    with Store(filled.store) as store:
        chosen = select_sessions(store, SelectionPolicy(**policy))  # type: ignore[arg-type]
    return [s.session.id for s in chosen]


# -- selection ---------------------------------------------------------------------------


def test_selection_by_thumb_evaluation_time_user_and_tenant(filled: Filled) -> None:
    a = ORG_A.tenant
    assert selected_ids(filled, tenant=a) == [filled.up, filled.order, filled.late]
    # the latest thumb counts: `down` was first given a thumb up, then a thumb down
    assert selected_ids(filled, tenant=a, thumbs="down") == [filled.down]
    everything = [filled.up, filled.down, filled.order, filled.silent, filled.late]
    assert selected_ids(filled, tenant=a, thumbs="any") == everything
    assert selected_ids(filled, tenant=a, thumbs="any", require_evaluation=True) == [
        filled.up,
        filled.down,
        filled.order,
    ]
    assert selected_ids(filled, tenant=a, thumbs="any", since=filled.split_at) == [filled.late]
    assert selected_ids(filled, tenant=a, thumbs="any", until=filled.split_at) == everything[:4]
    second = ORG_A.users[1].name
    assert selected_ids(filled, tenant=a, thumbs="any", users=(second,)) == [
        filled.down,
        filled.silent,
    ]
    assert selected_ids(filled, tenant=ORG_B.tenant) == [filled.other_tenant]
    assert selected_ids(filled, tenant="nobody") == []


def test_selection_policy_errors_are_one_line() -> None:
    for bad, words in (
        (dict(tenant="a", thumbs="sideways"), "thumbs must be one of up, down, any"),
        (dict(tenant=""), "needs a tenant"),
        (dict(tenant="a", since=5.0, until=5.0), "time window is empty"),
    ):
        with pytest.raises(SleepError, match=words) as error:
            SelectionPolicy(**bad)  # type: ignore[arg-type]
        assert "\n" not in str(error.value)


# -- experience and teacher context ------------------------------------------------------


def test_split_correction_reads_the_statement_then_the_question() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        item = knowledge.random_items(rng, 1)[0]
        statement = knowledge.statement(item)
        question = knowledge.question(item, rng).text
        assert split_correction(f"{statement} {question}") == (statement, question)
    assert split_correction("the wiki moved. where is it?") == ("the wiki moved.", "where is it?")


def experience_of(filled: Filled, **policy: object):  # type: ignore[no-untyped-def]
    with Store(filled.store) as store:
        return read_experience(select_sessions(store, SelectionPolicy(**policy)))  # type: ignore[arg-type]


def test_experience_holds_pastes_corrections_questions_and_evaluations(filled: Filled) -> None:
    doc = ORG_A.knowledge_at(0).documents[0]
    experience = experience_of(filled, tenant=ORG_A.tenant, thumbs="any", until=filled.split_at)
    assert experience.documents == (doc.text,)
    document_notes = [n for n in experience.notes if n.source == "document"]
    assert [n.text for n in document_notes] == doc.text.splitlines()
    assert [n.item for n in document_notes] == [
        knowledge.parse_statement(line) for line in doc.text.splitlines()
    ]
    assert {n.item for n in document_notes} == set(doc.items)
    corrections = [n for n in experience.notes if n.source == "correction"]
    assert [n.text for n in corrections] == [filled.corrected_statement]
    assert corrections[0].item in doc.items
    # questions from sessions without tools only: the order's user turn is not one
    assert [q.text for q in experience.questions] == [
        filled.pasted_question,
        filled.corrected_question,
        filled.corrected_question,
        filled.down_question,
        filled.pasted_question,
    ]
    assert [(e.session, e.thumb) for e in experience.evaluations] == [
        (filled.up, 1),
        (filled.down, -1),
        (filled.order, 1),
    ]
    assert experience.knowledge() == {item_key(item): item for item in doc.items}


def test_a_later_version_of_an_item_replaces_the_earlier_one(filled: Filled) -> None:
    doc_id = ORG_A.knowledge_at(0).documents[0].id
    week1 = ORG_A.knowledge_at(1).document(doc_id)
    experience = experience_of(filled, tenant=ORG_A.tenant)  # up, order, late: both weeks
    assert len(experience.documents) == 2
    assert set(experience.knowledge().values()) == set(week1.items)
    changed = [c for c in ORG_A.knowledge_at(1).changes if c.after in week1.items]
    assert changed, "org 3 changes an item of its first document in week 1"
    plan = plan_sleep(experience)
    for change in changed:
        contexts = {p.context for p in plan.targets if item_key(change.after) == key_of(p.text)}
        assert contexts, f"a target asks about {item_key(change.after)}"
        for context in contexts:
            items = {knowledge.parse_statement(line) for line in context.splitlines()}
            assert change.after in items and change.before not in items


def key_of(question: str) -> tuple[str, str] | None:
    form = knowledge.parse_question(question)
    return None if form is None else (form.subject, form.topic)


def test_teacher_context_is_the_document_holding_the_item(filled: Filled) -> None:
    doc = ORG_A.knowledge_at(0).documents[0]
    plan = plan_sleep(
        experience_of(filled, tenant=ORG_A.tenant, thumbs="up", until=filled.split_at)
    )
    assert {p.context for p in plan.probes} == {doc.text}
    assert {p.context for p in plan.targets} == {doc.text}
    everything = plan_sleep(
        experience_of(filled, tenant=ORG_A.tenant, thumbs="up", until=filled.split_at),
        PlanConfig(context_scope="all"),
    )
    assert {p.context for p in everything.probes} == {doc.text}  # one document: the same


def test_hindsight_puts_the_evaluation_in_the_teacher_context(filled: Filled) -> None:
    experience = experience_of(filled, tenant=ORG_A.tenant, thumbs="down")
    assert experience.notes == ()  # nothing pasted, nothing corrected
    without = plan_sleep(experience)
    assert without.probes == () and without.skipped == (filled.down_question,)
    with_hindsight = plan_sleep(experience, PlanConfig(hindsight=True, openers=()))
    (probe,) = with_hindsight.probes
    assert probe.text == filled.down_question and probe.kind == "question"
    assert probe.answer is None  # no note states it: only the critique does
    assert probe.context == (
        f"wrong: {filled.down_question} said wrong, it is {filled.down_answer}."
    )
    assert with_hindsight.targets == ()  # targets come from notes only

    # With notes too, the critique lines about the item follow the notes.
    both = plan_sleep(
        experience_of(filled, tenant=ORG_A.tenant, thumbs="any", until=filled.split_at),
        PlanConfig(hindsight=True),
    )
    pasted = next(p for p in both.probes if p.text == filled.pasted_question)
    doc = ORG_A.knowledge_at(0).documents[0]
    assert pasted.context == f"{doc.text}\nright: {filled.pasted_question}"
    down = next(p for p in both.probes if p.text == filled.down_question)
    assert "wrong: " in down.context and doc.text not in down.context


# -- probes and targets ------------------------------------------------------------------


def test_probes_real_questions_variations_and_self_study(filled: Filled) -> None:
    doc = ORG_A.knowledge_at(0).documents[0]
    experience = experience_of(filled, tenant=ORG_A.tenant, thumbs="up", until=filled.split_at)
    plan = plan_sleep(experience, PlanConfig(openers=()))  # openers: their own test
    by_text = {p.text: p for p in plan.probes}
    assert len(by_text) == len(plan.probes)  # each question once
    for real in (filled.pasted_question, filled.corrected_question):
        probe = by_text[real]
        assert probe.kind == "question"
        item = next(i for i in doc.items if item_key(i) == key_of(real))
        assert probe.answer == knowledge.answer_to(real, item)
        variations = [
            p for p in plan.probes if p.kind == "variation" and key_of(p.text) == key_of(real)
        ]
        # every other phrasing of the same question, none held out, all with its answer
        phrasings = {q.text for q in knowledge.questions_about(item) if q.answer == probe.answer}
        held = {t.text for t in plan.targets}
        assert {v.text for v in variations} == phrasings - held - {real}
        assert all(v.answer == probe.answer for v in variations)
    # self-study asks about every item of the document, with the document's answers
    studied = {key_of(p.text) for p in plan.probes}
    assert studied == {item_key(item) for item in doc.items}
    for probe in plan.probes:
        item = next(i for i in doc.items if item_key(i) == key_of(probe.text))
        assert probe.answer == knowledge.answer_to(probe.text, item)
        assert probe.student_messages == (
            {"role": "system", "content": KNOWLEDGE_SYSTEM},
            {"role": "user", "content": probe.text},
        )
    assert plan.count("question") == 2
    assert plan.count("self_study") > 0 and plan.count("variation") > 0
    only_asked = plan_sleep(experience, PlanConfig(self_study=False, variations=False, openers=()))
    assert [p.text for p in only_asked.probes] == [
        filled.pasted_question,
        filled.corrected_question,
    ]


def test_openers_ask_every_probe_again_and_leave_the_targets_plain(filled: Filled) -> None:
    experience = experience_of(filled, tenant=ORG_A.tenant, thumbs="up", until=filled.split_at)
    plain = plan_sleep(experience, PlanConfig(openers=()))
    opened = plan_sleep(experience, PlanConfig(openers=("hi!", "quick question:")))
    assert opened.targets == plain.targets
    assert opened.probes[: len(plain.probes)] == plain.probes
    extra = opened.probes[len(plain.probes) :]
    assert [p.text for p in extra] == [
        f"{opener} {p.text}" for opener in ("hi!", "quick question:") for p in plain.probes
    ]
    for probe, asked in zip(extra, plain.probes + plain.probes, strict=True):
        assert (probe.kind, probe.answer, probe.context) == ("opener", asked.answer, asked.context)
    assert opened.count("opener") == 2 * len(plain.probes)
    assert not {p.text for p in opened.probes} & {t.text for t in opened.targets}
    with pytest.raises(SleepError, match="openers must be distinct words"):
        PlanConfig(openers=("hi!", " "))
    with pytest.raises(SleepError, match="openers must be distinct words"):
        PlanConfig(openers=("hi!", "hi!"))


def test_targets_are_held_out_phrasings_with_the_documents_answers(filled: Filled) -> None:
    doc = ORG_A.knowledge_at(0).documents[0]
    experience = experience_of(filled, tenant=ORG_A.tenant, thumbs="up", until=filled.split_at)
    plan = plan_sleep(experience)
    probes = {p.text for p in plan.probes}
    assert plan.targets and all(t.kind == "held_out" for t in plan.targets)
    assert not probes & {t.text for t in plan.targets}
    asked = {filled.pasted_question, filled.corrected_question}
    answers_per_item: dict[tuple[str, str], set[str]] = {}
    for target in plan.targets:
        item = next(i for i in doc.items if item_key(i) == key_of(target.text))
        assert target.answer == knowledge.answer_to(target.text, item)
        assert target.context == doc.text
        answers_per_item.setdefault(item_key(item), set()).add(str(target.answer))
    for item in doc.items:  # every answer of every item is judged, unless users asked them all
        if isinstance(item, Procedure):
            assert answers_per_item[item_key(item)] == set(item.steps)
        elif isinstance(item, Convention):
            assert len(answers_per_item[item_key(item)]) == 1
            # practised on other ticket numbers than the one judged
            judged = answers_per_item[item_key(item)]
            practised = {p.answer for p in plan.probes if key_of(p.text) == item_key(item)}
            assert practised and not practised & judged
        else:
            phrasings = {q.text for q in knowledge.questions_about(item)}
            if not phrasings <= asked:
                assert answers_per_item[item_key(item)] == {item.value}
    again = plan_sleep(experience)
    assert again == plan  # deterministic
    assert plan_sleep(experience, PlanConfig(seed=1)).targets != plan.targets


def test_a_ticket_question_varies_its_phrasing_and_is_judged_on_another_number() -> None:
    convention = Convention("billing", "fin")
    line = knowledge.statement(convention)
    asked = "ticket id for billing number 42?"
    experience = Experience(
        sessions=("s",),
        documents=(line,),
        notes=(Note(line, convention, "document", 0, "s"),),
        questions=(Asked(asked, "s"),),
        evaluations=(),
    )
    plan = plan_sleep(experience)
    by_kind = {p.text: (p.kind, p.answer) for p in plan.probes}
    assert by_kind[asked] == ("question", "fin-42")
    assert by_kind["write the ticket id for billing issue 42."] == ("variation", "fin-42")
    (target,) = plan.targets
    assert target.answer != "fin-42" and str(target.answer).startswith("fin-")
    assert target.answer not in {answer for _, answer in by_kind.values()}
    assert target.context == line


def test_plan_config_errors_are_one_line() -> None:
    with pytest.raises(SleepError, match="context_scope must be one of document, all"):
        PlanConfig(context_scope="week")


def test_a_bad_guard_suite_is_refused_before_anything_trains() -> None:
    with pytest.raises(SleepError, match="unknown env nope; choose from arith, program, shop"):
        SleepConfig(guard_envs=("arith", "nope"))
    with pytest.raises(SleepError, match="guard_difficulty: arith difficulty must be one of"):
        SleepConfig(guard_envs=("arith",), guard_difficulty=9)


def test_guard_samples_must_name_guard_envs_with_a_count() -> None:
    with pytest.raises(SleepError, match="guard_samples: .*'shop': 4.* outside guard_envs"):
        SleepConfig(guard_envs=("arith",), guard_samples={"arith": 8, "shop": 4})
    with pytest.raises(SleepError, match="fewer than 1 sample"):
        SleepConfig(guard_samples={"arith": 0})
    assert SleepConfig().guard_plays() == {"arith": 64, "shop": 8}
    assert SleepConfig(guard_envs=("arith",)).guard_plays() == {"arith": 64}
    assert SleepConfig(guard_envs=("program",)).guard_plays() == {}  # the default, cut to fit
    assert SleepConfig(guard_samples={}).guard_plays() == {}  # all greedy


def test_sampled_guard_is_the_mean_over_seeded_plays_of_each_task(monkeypatch) -> None:
    """Each held-out task is played `samples` times at temperature 1 from a fixed seed, and
    the score is the share of plays that succeed; one play per task is greedy."""
    from onthejob import evals

    calls = []

    def fake_run_episodes(model, tokenizer, env_name, tasks, sampling, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((list(tasks), sampling, kwargs["seed"]))
        return [type("T", (), {"success": i % 4 == 0})() for i in range(len(tasks))]

    monkeypatch.setattr(evals, "run_episodes", fake_run_episodes)
    tasks = available_tasks("arith", "test", 5, evals.EVAL_SEED, 1)
    rate, played = evals.env_success(None, None, "arith", n=5, samples=8)  # type: ignore[arg-type]
    assert (rate, played) == (10 / 40, 5)
    played_tasks, sampling, seed = calls[-1]
    assert played_tasks == tasks * 8 and sampling.temperature == 1.0
    assert sampling.seed == seed == evals.EVAL_SEED
    rate, _ = evals.env_success(None, None, "arith", n=5)  # type: ignore[arg-type]
    assert rate == 2 / 5 and calls[-1][1].temperature == 0.0 and calls[-1][0] == tasks
    with pytest.raises(ValueError, match="samples must be at least 1"):
        evals.env_success(None, None, "arith", n=5, samples=0)  # type: ignore[arg-type]

    calls.clear()  # in chunks: play i keeps env seed EVAL_SEED + i, each chunk its own draws
    rate, _ = evals.env_success(None, None, "arith", n=5, samples=8, chunk=16)  # type: ignore[arg-type]
    assert [len(c[0]) for c in calls] == [16, 16, 8] and rate == (4 + 4 + 2) / 40
    assert [c[2] for c in calls] == [evals.EVAL_SEED + start for start in (0, 16, 32)]
    assert [c[1].seed for c in calls] == [evals.EVAL_SEED + 104_729 * k for k in range(3)]
    assert [t for c in calls for t in c[0]] == tasks * 8
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        evals.env_success(None, None, "arith", n=5, chunk=0)  # type: ignore[arg-type]


def test_greedy_plays_do_not_depend_on_the_chunk(tiny_model, tokenizer, monkeypatch) -> None:
    from onthejob import evals

    real, played = evals.run_episodes, []

    def recording_run_episodes(*args, **kwargs):  # type: ignore[no-untyped-def]
        trajectories = real(*args, **kwargs)
        played.extend((t.task_id, t.token_ids) for t in trajectories)
        return trajectories

    monkeypatch.setattr(evals, "run_episodes", recording_run_episodes)
    whole = evals.env_success(tiny_model, tokenizer, "arith", n=6)
    whole_plays, played[:] = list(played), []
    assert evals.env_success(tiny_model, tokenizer, "arith", n=6, chunk=4) == whole
    assert played == whole_plays and len(played) == 6


def test_cli_guard_samples_parse_and_default_to_the_guard_envs() -> None:
    from onthejob.cli import _env_counts

    assert _env_counts("arith=64, shop=2") == {"arith": 64, "shop": 2}
    assert _env_counts("greedy") == {}
    for bad in ("arith", "arith=0", "arith=x"):
        with pytest.raises(Exception, match="is not env=count"):
            _env_counts(bad)


# -- gate --------------------------------------------------------------------------------


def test_gate_promotes_on_gain_within_tolerance() -> None:
    decision = decide(0.10, 0.60, {"arith": 0.30, "shop": 0.05}, {"arith": 0.285, "shop": 0.07})
    assert decision.promote
    assert decision.reason == "recall 0.100 -> 0.600 (+0.500); guard within 0.020"


def test_gate_rejects_without_recall_gain() -> None:
    decision = decide(0.40, 0.40, {"arith": 0.3}, {"arith": 0.5})
    assert not decision.promote
    assert decision.reason.startswith("no recall gain: recall 0.400 -> 0.400 (+0.000)")
    assert not decide(0.40, 0.35, {}, {}).promote
    assert not decide(0.40, 0.45, {}, {}, GateConfig(min_gain=0.05)).promote
    assert decide(0.40, 0.46, {}, {}, GateConfig(min_gain=0.05)).promote


def test_gate_rejects_a_guard_drop_beyond_tolerance() -> None:
    decision = decide(0.1, 0.9, {"arith": 0.30, "shop": 0.10}, {"arith": 0.27, "shop": 0.10})
    assert not decision.promote
    assert decision.reason == (
        "guard fell beyond 0.020: arith 0.300 -> 0.270 (-0.030) (recall 0.100 -> 0.900 (+0.800))"
    )
    assert decide(0.1, 0.9, {"arith": 0.30}, {"arith": 0.27}, GateConfig(tolerance=0.05)).promote
    assert decide(0.1, 0.9, {"arith": 0.30}, {"arith": 0.28}).promote  # exactly 2 points
    with pytest.raises(SleepError, match="guard suites differ"):
        decide(0.1, 0.9, {"arith": 0.3}, {"shop": 0.3})


def test_gate_rejects_drift_since_the_lineage_start_that_each_step_hid() -> None:
    start = {"arith": 0.08, "shop": 0.10}
    # 2 points below the parent is within tolerance, but 4 below the lineage's start is not
    decision = decide(
        0.1, 0.3, {"arith": 0.06, "shop": 0.10}, {"arith": 0.04, "shop": 0.10}, lineage=start
    )
    assert not decision.promote
    assert decision.reason == (
        "guard drifted beyond 0.020 since the lineage's start: arith 0.080 at the lineage's"
        " start -> 0.040 (-0.040) (recall 0.100 -> 0.300 (+0.200))"
    )
    assert decide(0.1, 0.3, {"arith": 0.06}, {"arith": 0.06}, lineage={"arith": 0.08}).promote
    # scores the lineage's start did not measure (e.g. earlier knowledge) are not compared
    assert decide(
        0.1, 0.3, {"earlier knowledge": 0.5}, {"earlier knowledge": 0.5}, lineage=start
    ).promote


def test_lineage_guard_is_the_first_sleeps_measurement_of_the_same_suite(
    tmp_path: Path, model_dir: Path
) -> None:
    registry = Registry(tmp_path / "registry.sqlite")
    base = registry.promote(registry.register("t", model_dir, method="base").id)
    suite = {"guard": {"envs": ["arith"], "n": 50}}

    def child(parent, guard_before, config=suite):  # type: ignore[no-untyped-def]
        version = registry.register(
            "t",
            model_dir,
            method="opsd",
            parent=parent.id,
            config=config,
            evals={"guard_before": guard_before},
        )
        return registry.promote(version.id)

    first = child(base, {"arith success": 0.08})
    second = child(first, {"arith success": 0.06})
    assert lineage_guard(registry, base, ["arith"], 50) is None
    assert lineage_guard(registry, second, ["arith"], 50) == {"arith success": 0.08}
    assert lineage_guard(registry, second, ["arith"], 100) is None  # another suite
    assert lineage_guard(registry, second, ["arith"], 50, {"arith": 64}) is None  # sampled
    other = child(second, {"arith success": 0.3}, {"guard": {"envs": ["arith", "shop"], "n": 50}})
    assert lineage_guard(registry, other, ["arith"], 50) == {"arith success": 0.08}


def test_replay_probes_are_training_chats_the_teacher_sees_unchanged(tokenizer) -> None:
    probes = replay_probes(spread(("arith", "shop"), 5), difficulty=1, seed=0)
    assert len(probes) == 5 and all(p.context is None for p in probes)
    systems = [p.messages[0]["content"] for p in probes]
    assert systems == [env_system("arith")] * 3 + [env_system("shop")] * 2
    assert all(len(p.messages) == 2 for p in probes[:3])  # a sum has one turn: the opening
    for probe in probes:
        assert teacher_messages(probe) == list(probe.messages)
        student, teacher = probe_prompts(tokenizer, probe)
        assert student == teacher
    held_out = {t.prompt for t in available_tasks("arith", "test", 100, 0, 1)}
    assert not held_out & {p.messages[1]["content"] for p in probes[:3]}
    assert replay_probes({"arith": 0}, 1, 0) == replay_probes({}, 1, 0) == []


def test_replay_is_counted_by_env_and_a_number_spreads_evenly() -> None:
    assert spread(("arith", "program", "shop"), 50) == {"arith": 17, "program": 17, "shop": 16}
    assert spread(("arith", "shop"), 1) == {"arith": 1, "shop": 0}
    probes = replay_probes({"shop": 3, "arith": 1}, difficulty=1, seed=0)
    systems = [p.messages[0]["content"] for p in probes]
    assert systems == [env_system("shop")] * 3 + [env_system("arith")]  # the mapping's order
    # by default the guard envs' share of REPLAY; an env outside the guard is not replayed
    assert SleepConfig().replay_counts() == REPLAY
    assert SleepConfig(guard_envs=("arith",)).replay_counts() == {"arith": REPLAY["arith"]}
    assert SleepConfig(replay={"shop": 64}).replay_counts() == {"shop": 64}
    for bad in ({"chess": 4}, {"shop": -1}):
        with pytest.raises(SleepError, match="env=count for envs among arith"):
            SleepConfig(replay=bad)


@pytest.mark.parametrize(
    ("flag", "replay"),
    [
        ("5", {"arith": 3, "shop": 2}),  # a number spreads over the guard envs
        ("shop=64,arith=1", {"shop": 64, "arith": 1}),
        ("none", {}),
        (None, None),  # the default: REPLAY's guard envs
    ],
)
def test_the_replay_flag_takes_counts_by_env_or_a_number(flag: str | None, replay) -> None:
    from onthejob.cli import _sleep_config, build_parser

    argv = ["sleep", "--org", "3", "--guard-envs", "arith,shop"] + (
        ["--replay", flag] if flag else []
    )
    assert _sleep_config(build_parser().parse_args(argv)).replay == replay


def test_every_method_trains_on_the_same_token_budget_by_default() -> None:
    from onthejob.cli import _sleep_config, build_parser

    config = SleepConfig()
    assert config.opsd.token_budget == config.sft.token_budget == SLEEP_TOKENS
    assert config.opsd.steps == config.sft.steps  # a cap the budget reaches first
    args = build_parser().parse_args(["sleep", "--org", "3", "--tokens", "5000"])
    flagged = _sleep_config(args)
    assert flagged.opsd.token_budget == flagged.sft.token_budget == 5000


def test_the_openers_flag_names_them_and_alone_turns_them_off() -> None:
    from onthejob.cli import _sleep_config, build_parser

    def openers(*flag: str) -> tuple[str, ...]:
        args = build_parser().parse_args(["sleep", "--org", "3", *flag])
        return _sleep_config(args).plan.openers

    assert openers() == SleepConfig().plan.openers
    assert openers("--openers", "hi!", "hey team,") == ("hi!", "hey team,")
    assert openers("--openers") == ()


def test_replay_probes_cut_a_multi_turn_episode_before_any_expert_reply() -> None:
    """Shop probes are an episode's opening or the opening, then expert replies and the
    shop's pages, ending on a page: the student's next reply is what it practises."""
    probes = replay_probes({"shop": 12}, difficulty=1, seed=3)
    lengths = {len(p.messages) for p in probes}
    assert 2 in lengths and max(lengths) > 2  # openings and later turns both occur
    for probe in probes:
        assert [m["role"] for m in probe.messages[:2]] == ["system", "user"]
        assert [m["role"] for m in probe.messages[2:]] == ["assistant", "tool"] * (
            (len(probe.messages) - 2) // 2
        )
    assert replay_probes({"shop": 12}, 1, 3) == probes  # a function of the seed


# -- end to end: training, registry, tenants, the command --------------------------------

QUICK_OPSD = OPSDConfig(steps=2, batch_size=4, samples_per_probe=2, max_new_tokens=8)
QUICK_SFT = SFTConfig(steps=2, batch_size=4)


def quick(method: str, **changes: object) -> SleepConfig:
    """A seconds-long sleep: two steps, a guard of two arith tasks, two replay probes."""
    config = SleepConfig(
        method=method,
        opsd=QUICK_OPSD,
        sft=QUICK_SFT,
        guard_envs=("arith",),
        guard_n=2,
        guard_samples={"arith": 3},
        replay={"arith": 2},
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def _sleep_a(
    filled: Filled, registry: Registry, run_dir: Path, config: SleepConfig | None = None
) -> SleepResult:
    """One sleep of org A on its sessions before the split (quick OPSD by default)."""
    with Store(filled.store) as store:
        return sleep(
            store,
            registry,
            SelectionPolicy(tenant=ORG_A.tenant, until=filled.split_at),
            config or quick("opsd"),
            run_dir,
            show_progress=False,
        )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):  # type: ignore[no-untyped-def]
    """The tiny model with a 1024-position context, fitted for a second to answer short
    questions briefly: a random model never ends a reply, so a teacher's sample would never
    be whole (SFT on teacher samples drops cut answers)."""
    rng = random.Random(0)
    examples = []
    for _ in range(64):
        asked = knowledge.question(knowledge.random_items(rng, 1)[0], rng)
        chat = (*student_messages(asked.text), {"role": "assistant", "content": asked.answer})
        examples.append(SFTExample(chat, (False, False, True)))
    model = build_model(replace(TINY, max_positions=1024), tokenizer, seed=0)
    fitted = sft(
        model,
        tokenizer,
        examples,
        SFTConfig(steps=30, batch_size=16, lr=1e-2, lora=False),
        show_progress=False,
    )
    path = tmp_path_factory.mktemp("sleep-model") / "model"
    save_model(fitted.model, tokenizer, path)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize("method", ["opsd", "sft_transcript", "sft_teacher", "none"])
def test_every_method_registers_a_judged_candidate_under_the_tenant(
    tmp_path: Path, filled: Filled, model_dir: Path, method: str
) -> None:
    registry = Registry(tmp_path / "registry.sqlite")
    policy = SelectionPolicy(tenant=ORG_A.tenant, until=filled.split_at)
    with Store(filled.store) as store:
        result = sleep(
            store, registry, policy, quick(method), tmp_path / "run", model_dir, show_progress=False
        )
    base, candidate = registry.list(ORG_A.tenant)
    assert base.method == "base" and base.parent is None and Path(base.base) == model_dir
    assert candidate.id == result.version.id and candidate.parent == base.id
    assert candidate.method == method and candidate.tenant == ORG_A.tenant
    assert candidate.base == base.base
    if method == "none":  # the parent's weights again, no training
        assert candidate.adapter is None and result.train == {}
        assert result.recall_after == result.recall_before
    else:
        assert candidate.adapter == str(tmp_path / "run" / "candidate")
        assert (Path(candidate.adapter) / "adapter_config.json").is_file()
        assert result.train["steps"] == 2 and result.train["tokens"] > 0
        assert result.train["replay"] == (0 if method == "sft_transcript" else 2)
    evals = candidate.evals
    assert evals["recall_before"] == result.recall_before and evals["recall"] == result.recall_after
    assert set(evals["guard"]) == set(evals["guard_before"]) == {"arith success"}
    assert evals["targets"] == len(result.plan.targets) > 0
    assert evals["gate"] == ("promote" if result.decision.promote else "reject")
    config = candidate.config
    assert config["selection"]["tenant"] == ORG_A.tenant and config["sessions"] == 2
    assert config["targets"] == [[t.text, t.answer] for t in result.plan.targets]
    # the tiny random model learns nothing in two steps: the gate says why it rejects
    if not result.decision.promote:
        assert candidate.status == "rejected" and candidate.reason == result.decision.reason
        assert registry.promoted(ORG_A.tenant) == registry.get(base.id)
    else:
        assert candidate.status == "promoted"
    written = json.loads((tmp_path / "run" / "sleep.json").read_text())
    assert written["evals"]["version"] == candidate.id
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["sessions"] == [filled.up, filled.order]


@pytest.mark.parametrize(("method", "share"), [("opsd", 1.0), ("sft_teacher", 1.0), ("opsd", 0.5)])
def test_a_parent_adapter_is_trained_further(
    tmp_path: Path, filled: Filled, model_dir: Path, method: str, share: float
) -> None:
    registry = Registry(tmp_path / "registry.sqlite")
    policy = SelectionPolicy(tenant=ORG_A.tenant, until=filled.split_at)
    config = quick(method, opsd=replace(QUICK_OPSD, update_share=share))
    with Store(filled.store) as store:
        first = sleep(store, registry, policy, quick("opsd"), tmp_path / "1", model_dir, False)
        if first.version.status != "promoted":  # an operator overrides the gate
            registry.promote(first.version.id, reason="test: continue from the adapter")
        second = sleep(store, registry, policy, config, tmp_path / "2", show_progress=False)
    # keeping half of a further-trained adapter blends two updates back to its rank
    assert (second.train["share_error"] > 0) == (share < 1) and second.train["share_error"] < 1
    assert second.parent.id == first.version.id and second.parent.adapter is not None
    assert second.version.base == first.version.base  # one base, one adapter per lineage
    assert second.version.adapter == str(tmp_path / "2" / "candidate")
    trained = json.loads((Path(second.version.adapter) / "adapter_config.json").read_text())
    parent = json.loads((Path(first.version.adapter or "") / "adapter_config.json").read_text())
    assert trained["r"] == parent["r"]


def test_tenant_b_learns_only_from_its_own_sessions(
    tmp_path: Path, filled: Filled, model_dir: Path
) -> None:
    registry = Registry(tmp_path / "registry.sqlite")
    with Store(filled.store) as store:
        a = sleep(
            store,
            registry,
            SelectionPolicy(tenant=ORG_A.tenant, thumbs="any"),
            quick("opsd"),
            tmp_path / "a",
            model_dir,
            show_progress=False,
        )
        b = sleep(
            store,
            registry,
            SelectionPolicy(tenant=ORG_B.tenant, thumbs="any"),
            quick("opsd"),
            tmp_path / "b",
            model_dir,
            show_progress=False,
        )
    b_sessions = json.loads((tmp_path / "b" / "plan.json").read_text())["sessions"]
    assert b_sessions == [filled.other_tenant]
    a_doc = ORG_A.knowledge_at(0).documents[0].text
    b_doc = ORG_B.knowledge_at(0).documents[0].text
    assert all(a_doc not in p.context and p.context in b_doc for p in b.plan.probes)
    assert all(b_doc not in p.context for p in a.plan.probes)
    assert {t.text for t in b.plan.targets}.isdisjoint(t.text for t in a.plan.targets)
    assert b.version.tenant == ORG_B.tenant and b.parent.tenant == ORG_B.tenant
    assert [v.tenant for v in registry.list(ORG_B.tenant)] == [ORG_B.tenant] * 2
    assert registry.get(b.version.parent or "").tenant == ORG_B.tenant
    assert b.version.id not in [v.id for v in registry.list(ORG_A.tenant)]


def test_knowledge_of_earlier_sleeps_joins_the_guard(
    tmp_path: Path, filled: Filled, model_dir: Path
) -> None:
    week0 = ORG_A.knowledge_at(0)
    current, elsewhere = week0.documents[0], week0.documents[1]
    earlier = [knowledge.question(item, random.Random(7)) for item in elsewhere.items[:3]]
    updated = knowledge.question(current.items[0], random.Random(8))  # this sleep judges it
    registry = Registry(tmp_path / "registry.sqlite")
    base = registry.register(ORG_A.tenant, model_dir, method="base")
    registry.promote(base.id)
    previous = registry.register(
        ORG_A.tenant,
        model_dir,
        method="opsd",
        parent=base.id,
        config={"targets": [[q.text, q.answer] for q in [*earlier, updated]]},
    )
    registry.promote(previous.id)
    result = _sleep_a(filled, registry, tmp_path / "run")
    assert result.parent.id == previous.id
    assert set(result.guard_before) == {"arith success", "earlier knowledge"}
    version = registry.get(result.version.id)
    assert version.config["guard"]["earlier"] == len(earlier)  # not the updated item
    assert version.evals["guard"]["earlier knowledge"] == result.guard_after["earlier knowledge"]


def _memorized_parent(tmp_path: Path, registry: Registry, model_dir: Path) -> tuple[str, list]:
    """A promoted parent that knows three earlier facts by heart (full fine-tuning on them,
    no context), recorded as an earlier sleep's targets so they join the guard."""
    elsewhere = ORG_A.knowledge_at(0).documents[1]
    earlier = [knowledge.question(item, random.Random(7)) for item in elsewhere.items[:3]]
    chats = [
        SFTExample(
            (*student_messages(q.text), {"role": "assistant", "content": q.answer}),
            (False, False, True),
        )
        for q in earlier
    ]
    model, tokenizer = load_model(model_dir)
    taught = sft(
        model,
        tokenizer,
        chats,
        SFTConfig(steps=40, batch_size=3, lr=1e-2, lora=False),
        show_progress=False,
    )
    path = tmp_path / "parent"
    save_model(taught.model, tokenizer, path)  # type: ignore[arg-type]
    version = registry.register(
        ORG_A.tenant,
        path,
        method="sft",
        config={"targets": [[q.text, q.answer] for q in earlier]},
    )
    return registry.promote(version.id, reason="test: knows the earlier facts").id, earlier


def test_the_gate_rejects_a_deliberately_broken_candidate(
    tmp_path: Path, filled: Filled, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate's adapter is scrambled after training: the parent's earlier knowledge
    (recalled perfectly before) is gone, so the gate rejects it and the tenant keeps its
    promoted version."""
    registry = Registry(tmp_path / "registry.sqlite")
    parent_id, earlier = _memorized_parent(tmp_path, registry, model_dir)
    real_distill = sleep_run.distill

    def broken_distill(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_distill(*args, **kwargs)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in result.model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator))
        save_model(result.model, args[1], kwargs["out_dir"])
        return result

    monkeypatch.setattr(sleep_run, "distill", broken_distill)
    result = _sleep_a(filled, registry, tmp_path / "run")
    assert result.parent.id == parent_id and result.guard_before["earlier knowledge"] == 1.0
    assert result.guard_after["earlier knowledge"] < 1.0 - 0.02
    version = registry.get(result.version.id)
    assert version.status == "rejected" and version.reason == result.decision.reason
    assert "earlier knowledge" in version.reason or version.reason.startswith("no recall gain")
    assert registry.promoted(ORG_A.tenant).id == parent_id
    # what is served for the tenant still recalls every earlier fact
    served, tokenizer = load_version(registry.promoted(ORG_A.tenant))
    assert (
        no_context_recall(
            served, tokenizer, [SleepQuestion(q.text, q.answer, "", "earlier") for q in earlier]
        )
        == 1.0
    )


def test_rollback_serves_the_previous_version_again(
    tmp_path: Path, filled: Filled, model_dir: Path
) -> None:
    """A promoted candidate, then a rollback: the tenant's promoted version is the parent
    again, and loading it gives the parent's outputs, not the candidate's."""
    registry = Registry(tmp_path / "registry.sqlite")
    parent_id, earlier = _memorized_parent(tmp_path, registry, model_dir)
    result = _sleep_a(
        filled, registry, tmp_path / "run", quick("opsd", opsd=replace(QUICK_OPSD, lr=0.5))
    )
    if result.version.status != "promoted":  # an operator overrides the gate
        registry.promote(result.version.id, reason="test: promote, then roll back")
    ids = torch.tensor([[1, 2, 3, 4, 5]])

    def logits_of_promoted() -> torch.Tensor:
        model, _ = load_version(registry.promoted(ORG_A.tenant))
        with torch.no_grad():
            return model(input_ids=ids).logits

    assert result.train["replay"] == 2
    candidate = logits_of_promoted()
    restored = registry.rollback(ORG_A.tenant, reason="users complain", actor="test")
    assert restored.id == parent_id
    assert registry.get(result.version.id).status == "rolled_back"
    parent_model, _ = load_model(tmp_path / "parent")
    with torch.no_grad():
        torch.testing.assert_close(logits_of_promoted(), parent_model(input_ids=ids).logits)
    assert not torch.allclose(candidate, logits_of_promoted())


def test_sleep_errors_say_what_to_do(tmp_path: Path, filled: Filled, model_dir: Path) -> None:
    registry = Registry(tmp_path / "registry.sqlite")
    with Store(filled.store) as store:
        with pytest.raises(SleepError, match="no session of tenant 'nobody' matches"):
            sleep(store, registry, SelectionPolicy(tenant="nobody"), quick("opsd"), tmp_path)
        # thumbs down: nothing pasted or corrected, so nothing the gate could judge
        with pytest.raises(SleepError, match="nothing to consolidate"):
            policy = SelectionPolicy(tenant=ORG_A.tenant, thumbs="down")
            sleep(store, registry, policy, quick("opsd"), tmp_path, model_dir)
    with pytest.raises(SleepError, match="method must be one of none, opsd"):
        SleepConfig(method="dream")


def test_onthejob_sleep_prints_the_table_and_registers(
    tmp_path: Path, filled: Filled, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "registry.sqlite"
    argv = [
        "sleep",
        "--tenant",
        ORG_A.tenant,
        "--store",
        str(filled.store),
        "--registry",
        str(registry),
        "--model",
        str(model_dir),
        "--run-dir",
        str(tmp_path / "run"),
        "--steps",
        "2",
        "--guard-envs",
        "arith",
        "--guard-n",
        "2",
        "--until",
        str(filled.split_at),
        "--hindsight",
        "--divergence",
        "jsd",
        "--beta",
        "0.3",
        "--update-share",
        "0.5",
        "--replay",
        "arith=3",
        "--replay-temperature",
        "0.5",
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"sleep of {ORG_A.tenant}: opsd on 2 sessions" in out
    for row in ("recall, no context", "teacher: the parent with the context", "guard: arith"):
        assert row in out
    versions = Registry(registry).list(ORG_A.tenant)
    assert [v.method for v in versions] == ["base", "opsd"]
    assert versions[1].config["plan"]["hindsight"] is True
    assert (versions[1].config["opsd"]["divergence"], versions[1].config["opsd"]["beta"]) == (
        "jsd",
        0.3,
    )
    assert versions[1].config["opsd"]["update_share"] == 0.5
    assert versions[1].config["opsd"]["replay_temperature"] == 0.5
    assert versions[1].config["train"]["share_error"] == 0.0  # a fresh adapter: exact
    assert versions[1].config["train"]["replay"] == 3
    assert f"{versions[1].id} (parent {versions[0].id}, status {versions[1].status})" in out

    assert main([*argv[:-1], "--steps", "0", "--quiet"]) == 2
    assert "onthejob sleep: --steps must be > 0, got 0" in capsys.readouterr().err
    assert main([*argv[:-1], "--beta", "2", "--quiet"]) == 2
    assert "onthejob sleep: --beta must be in [0, 1]" in capsys.readouterr().err
    assert main([*argv[:-1], "--update-share", "0", "--quiet"]) == 2
    assert "onthejob sleep: --update-share must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert main([*argv[:-1], "--replay-temperature", "0", "--quiet"]) == 2
    assert "onthejob sleep: --replay-temperature must be > 0" in capsys.readouterr().err
    assert main([*argv[:-1], "--replay", "chess=2", "--quiet"]) == 2
    assert "replay: {'chess': 2} names an unknown env" in capsys.readouterr().err
    assert main(["sleep", "--org", "3", "--store", str(tmp_path / "none.sqlite")]) == 2
    assert "no experience store at" in capsys.readouterr().err
    assert main([*argv[:-1], "--since", "yesterday", "--quiet"]) == 2
    assert "--since takes seconds since the epoch or an ISO date" in capsys.readouterr().err
