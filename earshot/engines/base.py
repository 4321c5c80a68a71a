"""The Engine interface: what the pipeline needs from any inference backend.

Two primitives are enough for every task: generate text for prompts about one audio clip
(or none), and speak a text. Prompt building and output parsing live in
``earshot.analysis`` so that every engine returns identical results for identical text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

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

    def speak(self, text: str) -> Speech: ...
