"""Knowledge lines, quoted answers and how a reply is judged."""

from __future__ import annotations

import random

import pytest

from onthejob import curriculum, knowledge
from onthejob.knowledge import Convention, Fact, Procedure


def test_a_document_line_is_subject_relation_value():
    assert knowledge.statement(Fact("billing", "owner", "priya")) == "billing owner: priya."
    assert knowledge.statement(Fact("auth", "freeze", "friday")) == "auth freeze day: friday."
    steps = ("run tests", "tag release", "notify ops")
    assert (
        knowledge.statement(Procedure("wiki", "deploy", steps))
        == "wiki deploy steps: run tests, then tag release, then notify ops."
    )
    assert knowledge.statement(Convention("vault", "sec")) == "vault tickets: sec-number."


def test_every_line_reads_back_as_its_item_and_older_phrasings_still_parse():
    rng = random.Random(0)
    for _ in range(40):
        for item in knowledge.random_items(rng, 12):
            assert knowledge.parse_statement(knowledge.statement(item)) == item
    assert knowledge.parse_statement("billing is owned by priya.") == Fact(
        "billing", "owner", "priya"
    )
    assert knowledge.parse_statement("vault tickets are written sec-number.") == Convention(
        "vault", "sec"
    )


@pytest.mark.parametrize(
    ("reply", "expected", "right"),
    [
        ("billing owner: priya.\nso priya", "priya", True),
        ("billing owner: priya.\nso Priya.", "priya", True),
        ("priya", "priya", True),
        ("so priya", "priya", True),
        ("billing owner: priya.\nso omar", "priya", False),
        ("billing owner: priya.", "priya", False),  # the line alone is not an answer
        ("billing owner: omar.\nso priya", "priya", True),  # judged on the answer only
        ("wiki tickets: fin-number.\nso fin-42", "fin-42", True),
    ],
)
def test_a_reply_is_judged_on_its_final_answer(reply, expected, right):
    assert knowledge.is_correct(reply, expected) is right


def test_quoted_answer_puts_the_answer_on_its_own_last_line():
    reply = knowledge.quoted_answer("billing owner: priya.", "priya")
    assert reply == "billing owner: priya.\nso priya"
    assert knowledge.final_answer(reply) == "priya"


def test_the_expert_quotes_the_documents_line_for_every_question():
    rng = random.Random(3)
    for _ in range(50):
        example = curriculum.knowledge_example(rng, rng.randint(1, 12), rng.random() < 0.5, 8)
        document = "\n".join(m["content"] for m in example.messages[:2])
        replies = [m["content"] for m in example.messages if m["role"] == "assistant"]
        for reply in replies:
            line, answer = reply.split("\nso ")
            assert line in document.splitlines()
            assert answer in line or knowledge.parse_statement(line).__class__ is Convention


def test_a_correction_is_answered_by_quoting_the_corrected_line():
    rng = random.Random(5)
    for _ in range(40):
        example = curriculum.correction_example(rng)
        reply = example.messages[-1]["content"]
        line = reply.split("\nso ")[0]
        assert line in " ".join(m["content"] for m in example.messages[:-1])
        assert knowledge.is_correct(reply, example.answer)
