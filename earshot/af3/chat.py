"""Prompt assembly shared by the local engine, the Triton models and training.

Prompts are rendered with the checkpoint's own chat template (``tokenizer.apply_chat_template``),
never a second hand-written copy: the real AF3 template adds a default system turn and places
``<sound>`` before the text, and any drift from it puts every prompt off the training
distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SOUND_TOKEN = "<sound>"
THINK_SUFFIX = "Please think and reason about the input audio before you respond."


@dataclass(frozen=True)
class Turn:
    """One chat message. ``audio`` is how many clips this (user) turn refers to."""

    role: str
    text: str
    audio: int = 0


def with_think_suffix(text: str) -> str:
    """A user message as AF3's thinking mode expects it (training and inference alike)."""
    return f"{text.rstrip()} {THINK_SUFFIX}"


def messages(turns: Sequence[Turn], *, think: bool = False) -> list[dict[str, Any]]:
    """Turns as chat-template messages; the think suffix goes on the last user turn,
    where AF3 was trained to see it."""
    last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=-1)
    out: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        text = with_think_suffix(turn.text) if think and i == last_user else turn.text
        if turn.audio:
            content: Any = [{"type": "audio"}] * turn.audio + [{"type": "text", "text": text}]
        else:
            content = text
        out.append({"role": turn.role, "content": content})
    return out


def render(tokenizer: Any, turns: Sequence[Turn], *, think: bool = False) -> str:
    """The prompt text the checkpoint's template makes of ``turns``, ready for generation."""
    text = tokenizer.apply_chat_template(
        messages(turns, think=think), tokenize=False, add_generation_prompt=True
    )
    return str(text)


def single_turn(tokenizer: Any, text: str, *, n_audio: int = 1, think: bool = False) -> str:
    return render(tokenizer, [Turn("user", text, audio=n_audio)], think=think)
