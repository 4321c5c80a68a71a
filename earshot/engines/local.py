"""In-process engine: loads an AF3 checkpoint with transformers (GPU + bf16 when present)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from earshot.af3.chat import Turn, chatml, single_turn
from earshot.af3.loading import resolve_model_dir
from earshot.af3.runtime import AF3Runtime
from earshot.config import Settings
from earshot.speech import Speech, espeak


class LocalEngine:
    name = "local"

    def __init__(self, runtime: AF3Runtime, settings: Settings, *, model_id: str) -> None:
        self.runtime = runtime
        self.settings = settings
        self._model_id = model_id
        # the last clip's embeddings: analysis asks about one segment in several calls
        self._last_encoded: tuple[bytes, Any] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalEngine:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # weight-loading bars would break the CLI's own
        model_dir = resolve_model_dir(settings.model_path, settings)
        runtime = AF3Runtime.load(model_dir, device=settings.device, dtype=settings.dtype)
        return cls(runtime, settings, model_id=settings.model_path)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def has_think_adapter(self) -> bool:
        return self.runtime.think_loaded

    def generate(
        self,
        prompts: Sequence[str],
        *,
        audio: np.ndarray | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        think: bool = False,
    ) -> list[str]:
        clips = [self._encode(audio)] if audio is not None else []
        limit = max_new_tokens or self.settings.max_new_tokens
        return [
            self.runtime.generate(
                single_turn(p, n_audio=len(clips), think=think),
                clips,
                max_new_tokens=limit,
                temperature=temperature,
                think=think,
            ).text
            for p in prompts
        ]

    def chat_prompt(
        self, turns: Sequence[Turn], clips: Sequence[np.ndarray], *, think: bool = False
    ) -> tuple[str, list[Any]]:
        """The ChatML text and per-clip embeddings :meth:`chat` sends (one encode per clip)."""
        from earshot.errors import InputError

        if not turns or turns[-1].role != "user":
            raise InputError("a conversation must end with a user turn", code="bad_conversation")
        wanted = sum(t.audio for t in turns)
        if wanted != len(clips):
            raise InputError(
                f"the turns attach {wanted} audio clip(s) but {len(clips)} were given",
                code="prompt_audio_mismatch",
            )
        return chatml(turns, think=think), [self._encode(c) for c in clips]

    def _encode(self, audio: np.ndarray) -> Any:
        """Encoder output, reused when the same samples come again (one entry, by content)."""
        import hashlib

        data = np.ascontiguousarray(audio, dtype=np.float32)
        key = hashlib.blake2b(data.tobytes(), digest_size=16).digest() + str(data.shape).encode()
        with self.runtime.lock:
            if self._last_encoded is not None and self._last_encoded[0] == key:
                return self._last_encoded[1]
        embeds = self.runtime.encode(data)
        with self.runtime.lock:
            self._last_encoded = (key, embeds)
        return embeds

    def chat(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        *,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> str:
        prompt, embeds = self.chat_prompt(turns, clips, think=think)
        return self.runtime.generate(
            prompt,
            embeds,
            max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
            temperature=temperature,
            think=think,
        ).text

    def chat_stream(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        *,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> Iterator[str]:
        prompt, embeds = self.chat_prompt(turns, clips, think=think)
        yield from self.runtime.stream(
            prompt,
            embeds,
            max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
            temperature=temperature,
            think=think,
        )

    def speak(self, text: str) -> Speech:
        return espeak(text, voice=self.settings.tts_voice, binary=self.settings.espeak_binary)


