"""onthejob.sleep: selection, teacher contexts, probes, the gate, tenants, and `onthejob sleep`.

The store is a real SQLite file filled the way the serving API fills it at work: sessions
of an org's users (`make_org`) whose user turns paste the org's documents
("my notes:\\n<document>\\n\\n<question>") and correct wrong answers
("no. <statement> <question>"), as `onthejob.world.users` does, with thumbs and written
evaluations, on a clock the test moves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from onthejob import knowledge
from onthejob.knowledge import Convention, Fact, Procedure
from onthejob.prompts import AGENT_SYSTEM, KNOWLEDGE_SYSTEM, SHOP_TOOL, TOOLS_HEADER, tool_line
from onthejob.sleep import (
    GateConfig,
    PlanConfig,
    SelectionPolicy,
    SleepError,
    decide,
    plan_sleep,
    read_experience,
    select_sessions,
    split_correction,
)
from onthejob.store import NewTurn, Store
from onthejob.world import make_org
from onthejob.world.org import Org, item_key

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
    statement = knowledge.statement(facts[1], random.Random(3))
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
        statement = knowledge.statement(item, rng)
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
    with_hindsight = plan_sleep(experience, PlanConfig(hindsight=True))
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
    plan = plan_sleep(experience)
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
    only_asked = plan_sleep(experience, PlanConfig(self_study=False, variations=False))
    assert [p.text for p in only_asked.probes] == [
        filled.pasted_question,
        filled.corrected_question,
    ]


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


def test_plan_config_errors_are_one_line() -> None:
    with pytest.raises(SleepError, match="context_scope must be one of document, all"):
        PlanConfig(context_scope="week")


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
