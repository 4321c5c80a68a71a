"""The Engine interface: what the pipeline needs from any inference backend.

Two primitives are enough for every task: generate text for prompts about one audio clip
(or none), and speak a text. Prompt building and output parsing live in
``earshot.analysis`` so that every engine returns identical results for identical text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from earshot.af3.chat import Turn
from earshot.speech import Speech


@runtime_checkable
class Engine(Protocol):
    name: str

    @property
    def model_id(self) -> str: ...

    @property
    def has_think_adapter(self) -> bool: ...

    def generate(
        self,
        prompts: Sequence[str],
        *,
        audio: np.ndarray | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        think: bool = False,
    ) -> list[str]:
        """Answer each user prompt about ``audio`` (16 kHz mono, <= 600 s) or about nothing.

        The audio is encoded once for all prompts. ``think`` appends AF3's think suffix and
        switches the think adapter on where one is loaded.
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
    ) -> str:
        """Answer the last turn of a multi-turn, multi-audio conversation; returns the raw text.

        ``turns`` is the whole conversation in order and ends with a user turn. A user turn's
        ``audio`` is how many clips it attaches; ``clips`` holds them all in conversation
        order (16 kHz mono float32, each <= 600 s), so ``sum(t.audio for t in turns) ==
        len(clips)`` (else ``InputError`` code ``prompt_audio_mismatch``). The prompt is
        ``earshot.af3.chat.chatml(turns, think=think)``: each clip is encoded on its own and
        its embeddings fill the run of audio tokens of its own ``<sound>`` placeholder, so a
        later turn can refer back to audio attached earlier. ``think`` appends AF3's think
        suffix to the last user turn and switches the think adapter on where one is loaded.
        The text is returned as generated (a thinking trace included): callers split it.
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
        """:meth:`chat`, yielding text pieces as they are generated; joined, they equal its result."""
        ...

    def speak(self, text: str) -> Speech: ...
