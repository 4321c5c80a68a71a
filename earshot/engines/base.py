"""The Engine interface: what the pipeline needs from any inference backend.

Two primitives are enough for every task: generate text for prompts about audio clips (or
none), and speak a text. One ``generate`` call carries several audios (the speech chunks of
a segment, or one segment) and several prompts, so an engine can encode each audio once and
decode all prompts together. Every answer says why it stopped: an answer cut by its token
limit must never pass for a whole one. Prompt building and output parsing live in
``earshot.analysis`` so that every engine returns identical results for identical text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from earshot.af3.chat import Turn
from earshot.af3.generation import Generation, StopReason
from earshot.errors import InputError
from earshot.speech import Speech

__all__ = ["Ask", "Engine", "Generation", "StopReason", "check_asks", "texts"]


@dataclass(frozen=True)
class Ask:
    """One prompt of a call: the user text about one of the call's audios (or about none)."""

    prompt: str
    # index into the call's ``audios``; None: a text-only prompt
    audio: int | None = None
    # None: the engine's configured default
    max_new_tokens: int | None = None
    # append AF3's think suffix and apply the think adapter where one is loaded
    think: bool = False


def texts(generations: Sequence[Generation]) -> list[str]:
    return [g.text for g in generations]


def check_asks(asks: Sequence[Ask], n_audios: int) -> None:
    """Every engine refuses an ask about an audio the call does not carry."""
    for ask in asks:
        if ask.audio is not None and not 0 <= ask.audio < n_audios:
            raise InputError(f"an ask refers to audio {ask.audio} of {n_audios}", code="prompt_audio_mismatch")


@runtime_checkable
class Engine(Protocol):
    name: str

    @property
    def model_id(self) -> str: ...

    @property
    def has_think_adapter(self) -> bool: ...

    def generate(
        self,
        asks: Sequence[Ask],
        *,
        audios: Sequence[np.ndarray] = (),
        temperature: float = 0.0,
    ) -> list[Generation]:
        """Answer every ask; answers come back in ask order.

        ``audios`` are 16 kHz mono float32 clips, each <= 600 s; each is encoded once however
        many asks refer to it. An ask's prompt is rendered with the checkpoint's own chat
        template as one user turn holding one ``<sound>`` (the base AF3 hears one sound per
        prompt). An ask whose ``audio`` index is out of range is an ``InputError``.
        """
        ...

    def chat(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        *,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> Generation:
        """Answer the last turn of a conversation; the text is returned as generated.

        ``turns`` is the whole conversation in order and ends with a user turn. The base AF3
        hears one sound per prompt, so at most one clip: ``len(clips) <= 1`` and
        ``sum(t.audio for t in turns) == len(clips)`` (else ``InputError`` code
        ``prompt_audio_mismatch``). ``earshot.chat`` joins a conversation's clips into one
        audio before it calls this. ``think`` appends AF3's think suffix to the last user turn
        and applies the think adapter where one is loaded; callers split the thought.
        """
        ...

    def chat_stream(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        *,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> Iterator[str]:
        """:meth:`chat`, yielding text pieces as they are generated; joined, they equal its text.

        An engine that knows how the answer ended returns its :class:`Generation` as the
        generator's return value (``StopIteration.value``), so a streamed answer cut by its
        limit is reported too; ``None`` when it does not know.
        """
        ...

    def speak(self, text: str) -> Speech: ...
