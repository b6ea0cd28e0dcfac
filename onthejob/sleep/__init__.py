"""Sleep: consolidate a tenant's recorded experience into a new candidate model version.

One sleep runs four steps, one module each:

1. `selection`: the tenant's sessions by a `SelectionPolicy` (thumbs up by default, a
   written evaluation, a time window, users), and the experience read back from their
   turns: pasted documents, corrections, questions, evaluations.
2. `plan`: probes (the users' real questions, their other phrasings, self-study questions
   about every line the users gave) and held-out targets, each with its teacher context
   (the document holding its item; with hindsight, the users' critique of it too).
3. `run`: train by a method ("opsd", "sft_transcript", "sft_teacher", or "none": context
   only) at one token budget, and register the candidate under the tenant.
4. `gate`: promote only if no-context recall of the targets rose and the guard suite
   (held-out env success, knowledge of earlier sleeps) fell by no more than 2 points.

Not covered: the losses (`onthejob.train.opsd`, `onthejob.train.sft`), dreaming,
alternating work and sleep over many weeks.

Where this departs from OPSD (Zhao et al. 2026) and SDFT (Shenfeld et al. 2026): their
teacher context is a demonstration or the reference solution of the same problem; here it
is what a user pasted or said at work, and the probes are generated from it (real
questions, paraphrases, self-study), as in self-study context distillation. The selection
by feedback, hindsight, the gate and the tenant-scoped adapters are not part of either
method.
"""

from onthejob.sleep.gate import (
    EARLIER,
    Decision,
    GateConfig,
    decide,
    earlier_knowledge,
    guard_suite,
    no_context_recall,
    probe_of,
    with_context_accuracy,
)
from onthejob.sleep.plan import (
    CONTEXT_SCOPES,
    Plan,
    PlanConfig,
    SleepQuestion,
    plan_sleep,
    student_messages,
)
from onthejob.sleep.run import METHODS, SleepConfig, SleepResult, load_version, sleep
from onthejob.sleep.selection import (
    THUMBS,
    Asked,
    Evaluation,
    Experience,
    Note,
    SelectedSession,
    SelectionPolicy,
    SleepError,
    read_experience,
    select_sessions,
    split_correction,
    uses_tools,
)

__all__ = [
    "CONTEXT_SCOPES",
    "EARLIER",
    "METHODS",
    "THUMBS",
    "Asked",
    "Decision",
    "Evaluation",
    "Experience",
    "GateConfig",
    "Note",
    "Plan",
    "PlanConfig",
    "SelectedSession",
    "SelectionPolicy",
    "SleepConfig",
    "SleepError",
    "SleepQuestion",
    "SleepResult",
    "decide",
    "earlier_knowledge",
    "guard_suite",
    "load_version",
    "no_context_recall",
    "plan_sleep",
    "probe_of",
    "read_experience",
    "select_sessions",
    "sleep",
    "split_correction",
    "student_messages",
    "uses_tools",
    "with_context_accuracy",
]
