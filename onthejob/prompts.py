"""The fixed instructions the agent sees: one place, so training and use never drift apart.

Covers: the system prompt of each kind of chat (knowledge questions, each
environment, the world model) and the opening messages of an agent episode.
Not covered: rendering to tokens (see `onthejob.models.tokenizer`).
"""

from __future__ import annotations

Message = dict[str, str]

KNOWLEDGE_SYSTEM = "answer from the notes. reply with the answer only."
AGENT_SYSTEM = {
    "arith": "solve the problem. reply with the number only.",
    "program": "write the python function. reply with code only.",
    "shop": "you operate a web shop. reply with one action.",
}
DEFAULT_AGENT_SYSTEM = "you are an agent. reply with one action."
WORLD_MODEL_SYSTEM = "predict the next page the shop shows."


def agent_opening(env_name: str, first_observation: str) -> list[Message]:
    """System instruction of the environment and its first observation as the user turn."""
    system = AGENT_SYSTEM.get(env_name, DEFAULT_AGENT_SYSTEM)
    return [{"role": "system", "content": system}, {"role": "user", "content": first_observation}]


def world_model_prompt(observation: str, action: str) -> list[Message]:
    """The chat that asks for the observation that follows `action` on `observation`."""
    return [
        {"role": "system", "content": WORLD_MODEL_SYSTEM},
        {"role": "user", "content": f"page:\n{observation}\naction: {action}"},
    ]
