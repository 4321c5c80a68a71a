"""What one generation returns, shared by the AF3 runtime, the Triton models and the engines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StopReason = Literal["eos", "length"]


@dataclass(frozen=True)
class Generation:
    """One answer and how it ended."""

    text: str
    # "eos": the model ended the answer; "length": it hit max_new_tokens (the answer is cut)
    stop: StopReason
    # prompt tokens including the expanded audio tokens
    prompt_tokens: int
    # generated tokens, the end-of-turn token included when stop == "eos"
    new_tokens: int
    # the think adapter took part in this answer
    adapter: bool = False

    @property
    def truncated(self) -> bool:
        return self.stop == "length"
