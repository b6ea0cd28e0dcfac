"""Training: pretraining, RL and distillation losses with their loops; checkpoints.

`ConfigError` lives here, the one error every training config raises for a bad field
(the CLI turns its field into the flag that set it), with `check_fields`, which raises it
for the first field a config's checks find wrong, and `config_key`, the short hash that
names a config's runs and checks its checkpoints.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any


class ConfigError(ValueError):
    """A config field has a bad value; `field` names it (the CLI turns it into a flag)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def check_fields(config: Any, problems: Mapping[str, tuple[bool, str]]) -> None:
    """Raise ConfigError for the first field whose check failed: problems maps a field's
    name to (whether its value is wrong, what it must be)."""
    for name, (bad, want) in problems.items():
        if bad:
            raise ConfigError(name, f"must be {want}, got {getattr(config, name)!r}")


def config_key(config: Any) -> str:
    """Short hash of a dataclass config: every field, nested ones included, in sorted order."""
    return hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]
