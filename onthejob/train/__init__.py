"""Training: pretraining, RL and distillation losses with their loops; checkpoints.

`ConfigError` lives here, the one error every training config raises for a bad field
(the CLI turns its field into the flag that set it).
"""


class ConfigError(ValueError):
    """A config field has a bad value; `field` names it (the CLI turns it into a flag)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem
