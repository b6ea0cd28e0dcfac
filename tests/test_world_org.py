"""world.org: an organisation from a seed, its documents, its weekly changes and its tasks."""

from __future__ import annotations

import random

import pytest

from onthejob import knowledge
from onthejob.knowledge import Convention, Fact, Procedure
from onthejob.world.org import (
    Org,
    OrgConfig,
    QuestionTask,
    ServiceTask,
    item_key,
    make_org,
)
from onthejob.world.service import ACCOUNT_PATTERN
from onthejob.world.supplier import DAYS_PER_WEEK, catalogue_on, layout_of_week


def all_tasks(org: Org, week: int) -> list[QuestionTask | ServiceTask]:
    return [task for day in range(DAYS_PER_WEEK) for task in org.tasks(week, day)]


def answer_in(text: str, task: QuestionTask) -> bool:
    """Whether a document text states what the question's answer is made of."""
    item = task.item
    if isinstance(item, Convention):
        return f"{item.prefix}-" in text and task.answer.startswith(f"{item.prefix}-")
    return task.answer in text


def test_same_seed_same_org_other_seed_other_org() -> None:
    a, b, c = make_org(5), make_org(5), make_org(6)
    assert a == b and a != c
    for week in (0, 1, 3):
        assert a.knowledge_at(week) == b.knowledge_at(week)
    assert [d.text for d in a.knowledge_at(2).documents] == [
        d.text for d in b.knowledge_at(2).documents
    ]
    assert all_tasks(a, 2) == all_tasks(b, 2)
    assert a.initial != c.initial
    assert a.knowledge_at(0).documents[0].text != c.knowledge_at(0).documents[0].text
    assert len({make_org(seed).tenant for seed in range(20)}) == 20  # held-out orgs are distinct


def test_knowledge_comes_from_the_knowledge_generator_in_documents_of_eight_or_more() -> None:
    for seed in range(6):
        org = make_org(seed)
        now = org.knowledge_at(0)
        assert 24 <= len(now.items) <= 40
        assert {type(item) for item in now.items} == {Fact, Procedure, Convention}
        keys = [item_key(item) for doc in now.documents for item in doc.items]
        assert sorted(keys) == sorted(item_key(item) for item in now.items)  # each in one document
        for doc in now.documents:
            assert len(doc.items) >= 8
            lines = doc.text.splitlines()
            assert len(lines) == len(doc.items)
            for item in doc.items:  # each item stated by the generator's own line
                assert knowledge.statement(item) in lines, (item, lines)
        held = {doc for user in org.users for doc in user.documents}
        assert held == {doc.id for doc in now.documents}
        for user in org.users:
            assert user.name in knowledge.PEOPLE and ACCOUNT_PATTERN.fullmatch(user.account)
    big = make_org(1, OrgConfig(items=40, items_per_document=8))
    assert [len(d.items) for d in big.knowledge_at(0).documents] == [8] * 5


def test_weekly_changes_are_recorded_and_applied() -> None:
    org = make_org(3)
    before, after = org.knowledge_at(0), org.knowledge_at(1)
    assert before.changes == ()
    facts = [item for item in before.items if isinstance(item, Fact)]
    changes = after.changes
    changed_facts = [c for c in changes if isinstance(c.after, Fact)]
    assert len(changed_facts) == round(0.2 * len(facts))
    assert any(not isinstance(c.after, Fact) for c in changes)  # procedures/conventions too
    changed = {c.key for c in changes}
    for change in changes:
        assert change.week == 1 and change.before != change.after
        assert change.before in before.items and change.after in after.items
        assert item_key(change.before) == item_key(change.after)
    unchanged_before = [i for i in before.items if item_key(i) not in changed]
    assert unchanged_before == [i for i in after.items if item_key(i) not in changed]
    # a document changes exactly in the lines of its changed items
    for old_doc, new_doc in zip(before.documents, after.documents, strict=True):
        differing = sum(
            a != b
            for a, b in zip(old_doc.text.splitlines(), new_doc.text.splitlines(), strict=True)
        )
        assert differing == sum(item_key(i) in changed for i in new_doc.items)
    assert org.changes(3) == [*changes, *org.knowledge_at(2).changes, *org.knowledge_at(3).changes]
    item = changes[0].after
    history = org.history(item, 1)
    assert history == [changes[0].before, changes[0].after]
    # deterministic per (seed, week), whatever order the weeks are asked in
    fresh = make_org(3)
    assert fresh.knowledge_at(4) == org.knowledge_at(4)
    frozen = make_org(3, OrgConfig(fact_change_share=0, other_change_share=0))
    assert frozen.knowledge_at(2).items == frozen.knowledge_at(0).items
    assert frozen.changes(2) == []


def test_question_tasks_have_answers_in_their_document_and_record_stale_answers() -> None:
    org = make_org(11)
    week = 2
    now = org.knowledge_at(week)
    questions = [t for t in all_tasks(org, week) if isinstance(t, QuestionTask)]
    assert len(questions) == DAYS_PER_WEEK * len(org.users) * org.config.questions_per_day
    for task in questions:
        doc = now.document(task.document)
        assert task.item in doc.items and answer_in(doc.text, task)
        assert task.document in org.user(task.user).documents
        assert task.check(task.answer).success
        assert task.check(f"  {task.answer.upper()}. ").success
        for old in task.stale_answers:
            assert not knowledge.is_correct(old, task.answer)
            verdict = task.check(old)
            assert not verdict.success and verdict.reason.startswith("stale")
    stale = [t for t in questions if t.stale_answers]
    assert stale, "questions about changed items must carry their old answers"
    for task in stale:
        assert len(set(org.history(task.item, week))) > 1  # the item did change
    wrong = questions[0].check("definitely not it")
    assert not wrong.success and wrong.reason.startswith("wrong")
    # changed items are asked about more than their share of the pool
    changed = {c.key for c in now.changes}
    share = sum(item_key(t.item) in changed for t in questions) / len(questions)
    assert share > len(changed) / len(now.items)


def test_a_changed_fact_has_its_old_value_as_a_stale_answer() -> None:
    org = make_org(2)
    change = next(c for c in org.knowledge_at(1).changes if isinstance(c.after, Fact))
    task = org._question(org.users[0], change.after, 1, draw=7)
    assert isinstance(change.before, Fact) and isinstance(change.after, Fact)
    assert task.answer == change.after.value and task.stale_answers == (change.before.value,)


def test_order_tasks_are_feasible_in_the_catalogue_and_phrased_like_the_clone() -> None:
    org = make_org(4)
    for week in (0, 1):
        for day in range(DAYS_PER_WEEK):
            goods = catalogue_on(org.seed, week * DAYS_PER_WEEK + day, org.config.supplier)
            orders = [t for t in org.tasks(week, day) if isinstance(t, ServiceTask)]
            assert len(orders) == len(org.users)
            for task in orders:
                assert task.account == org.user(task.user).account
                assert task.request.startswith(f"buy {task.quantity} {task.goal['color']}")
                assert task.request.endswith(f"at most {task.budget} dollars each.")
                fits = [
                    item
                    for item in goods
                    if all(item[k] == v for k, v in task.goal.items())
                    and item["price"] <= task.budget
                    and item["stock"] >= task.quantity
                ]
                assert fits, task
    empty = [{**item, "stock": 0} for item in catalogue_on(4, 0, org.config.supplier)]
    assert not [t for t in org.tasks(0, 0, catalogue=empty) if isinstance(t, ServiceTask)]


def line(item_id: str, quantity: int, price: int, **attributes: str) -> dict[str, object]:
    base = {"category": "shirt", "color": "blue", "material": "cotton", "size": "m"}
    return {"id": item_id, "quantity": quantity, "price": price, **base, **attributes}


def test_service_task_checker_reads_orders_not_words() -> None:
    task = ServiceTask(
        user="priya",
        account="acme-1-priya",
        request="buy 2 blue cotton shirts, at most 30 dollars each.",
        goal={"category": "shirt", "color": "blue", "material": "cotton"},
        budget=30,
        quantity=2,
        day=0,
    )

    def state(*orders: tuple[int, str, list[dict[str, object]]]) -> dict[str, object]:
        return {"orders": [{"id": i, "account": a, "lines": lines} for i, a, lines in orders]}

    me, other = task.account, "acme-1-omar"
    assert task.check(state((1, me, [line("p100", 2, 30)]))).success
    assert task.check(state((1, me, [line("p100", 1, 20)]), (2, me, [line("p101", 1, 25)]))).success
    assert not task.check(state()).success
    assert not task.check(state((1, other, [line("p100", 2, 30)]))).success
    assert not task.check(state((1, me, [line("p100", 2, 30)])), since_order=1).success
    assert "red" in task.check(state((3, me, [line("p100", 2, 20, color="red")]))).reason
    assert "over 30" in task.check(state((3, me, [line("p100", 2, 31)]))).reason
    assert "wanted 2" in task.check(state((3, me, [line("p100", 3, 20)]))).reason


def test_tasks_use_the_given_rng_and_bad_arguments_are_one_line_errors() -> None:
    org = make_org(9)
    assert org.tasks(1, 2, random.Random(0)) == org.tasks(1, 2, random.Random(0))
    assert org.tasks(1, 2, random.Random(0)) != org.tasks(1, 2, random.Random(1))
    with pytest.raises(ValueError, match="day of the week"):
        org.tasks(0, DAYS_PER_WEEK)
    with pytest.raises(ValueError, match="week must be"):
        org.knowledge_at(-1)
    with pytest.raises(ValueError, match="seed is an int"):
        make_org("7")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="items must be"):
        OrgConfig(items=4)
    with pytest.raises(ValueError, match="fact_change_share"):
        OrgConfig(fact_change_share=1.5)
    with pytest.raises(KeyError, match="no document"):
        org.knowledge_at(0).document("doc-99")


def test_layout_changes_every_week_after_the_first() -> None:
    layouts = [layout_of_week(3, week) for week in range(8)]
    assert all(a != b for a, b in zip(layouts, layouts[1:], strict=False))
    assert layouts == [layout_of_week(3, week) for week in range(8)]
