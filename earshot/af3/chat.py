"""ChatML prompt assembly shared by the local engine, the Triton models and training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SOUND_TOKEN = "<sound>"
THINK_SUFFIX = "Please think and reason about the input audio before you respond."

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{{ '<sound>' }}{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Turn:
    """One chat message. ``audio`` is how many clips this (user) turn refers to."""

    role: str
    text: str
    audio: int = 0


def with_think_suffix(text: str) -> str:
    """A user message as AF3's thinking mode expects it (training and inference alike)."""
    return f"{text.rstrip()} {THINK_SUFFIX}"


def chatml(turns: Sequence[Turn], *, think: bool = False) -> str:
    """Render turns as ChatML with one ``<sound>`` per referenced clip, ready for generation.

    The think suffix goes on the last user turn: that is where AF3 was trained to see it.
    """
    last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=-1)
    parts: list[str] = []
    for i, turn in enumerate(turns):
        text = turn.text
        if think and i == last_user:
            text = with_think_suffix(text)
        parts.append(f"<|im_start|>{turn.role}\n{SOUND_TOKEN * turn.audio}{text}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def single_turn(text: str, *, n_audio: int = 1, think: bool = False) -> str:
    return chatml([Turn("user", text, audio=n_audio)], think=think)
