"""In-process engine: loads an AF3 checkpoint with transformers (GPU + bf16 when present)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from earshot.af3.chat import Turn
from earshot.af3.compiled import apply_decode_mode
from earshot.af3.loading import resolve_model_dir
from earshot.af3.runtime import AF3Runtime, Row
from earshot.config import Settings
from earshot.engines.base import Ask, Generation, check_asks
from earshot.errors import InputError
from earshot.speech import Speech, espeak


class LocalEngine:
    name = "local"

    def __init__(self, runtime: AF3Runtime, settings: Settings, *, model_id: str) -> None:
        self.runtime = runtime
        self.settings = settings
        self._model_id = model_id
        # the last clip's embeddings: a segment is asked about in several calls
        self._cache_lock = threading.Lock()
        self._last_encoded: tuple[bytes, Any] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalEngine:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # weight-loading bars would break the CLI's own
        model_dir = resolve_model_dir(settings.model_path, settings)
        runtime = AF3Runtime.load(model_dir, device=settings.device, dtype=settings.dtype)
        apply_decode_mode(runtime, settings.decode_mode, max_cache_len=settings.decode_max_cache_len or None)
        return cls(runtime, settings, model_id=settings.model_path)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def has_think_adapter(self) -> bool:
        return self.runtime.think_loaded

    def generate(
        self,
        asks: Sequence[Ask],
        *,
        audios: Sequence[np.ndarray] = (),
        temperature: float = 0.0,
    ) -> list[Generation]:
        if not asks:
            return []
        check_asks(asks, len(audios))
        encoded = self._encode_needed(asks, audios)
        rows = []
        for ask in asks:
            clips = [] if ask.audio is None else [encoded[(ask.audio, self.runtime.audio_mode(ask.think))]]
            prompt = self.runtime.prompt([Turn("user", ask.prompt, audio=len(clips))], think=ask.think)
            rows.append(Row(prompt, clips, self._limit(ask.max_new_tokens), ask.think))
        return self.runtime.generate_batch(rows, temperature=temperature)

    def _encode_needed(
        self, asks: Sequence[Ask], audios: Sequence[np.ndarray]
    ) -> dict[tuple[int, bool], Any]:
        """Each audio an ask refers to, encoded once per mode; the clips of a call share
        encoder forwards (the speech chunks of a segment are many short clips)."""
        encoded: dict[tuple[int, bool], Any] = {}
        for mode in (False, True):
            wanted = sorted({a.audio for a in asks if a.audio is not None and self.runtime.audio_mode(a.think) == mode})
            if len(wanted) == 1:
                encoded[(wanted[0], mode)] = self._encode(audios[wanted[0]], think=mode)
            elif wanted:
                clips = [np.ascontiguousarray(audios[i], dtype=np.float32) for i in wanted]
                for i, embeds in zip(wanted, self.runtime.encode_many(clips, think=mode), strict=True):
                    encoded[(i, mode)] = embeds
        return encoded

    def _limit(self, max_new_tokens: int | None) -> int:
        return max_new_tokens or self.settings.max_new_tokens

    def chat_row(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        *,
        think: bool = False,
        max_new_tokens: int | None = None,
    ) -> Row:
        """The prompt row :meth:`chat` sends: the template's text and the one clip's embeddings."""
        if not turns or turns[-1].role != "user":
            raise InputError("a conversation must end with a user turn", code="bad_conversation")
        wanted = sum(t.audio for t in turns)
        if wanted != len(clips) or len(clips) > 1:
            raise InputError(
                f"the turns attach {wanted} audio clip(s) and {len(clips)} were given; the base "
                "AF3 hears one sound per prompt (join clips first, see earshot.chat)",
                code="prompt_audio_mismatch",
            )
        mode = self.runtime.audio_mode(think)
        embeds = [self._encode(c, think=mode) for c in clips]
        return Row(self.runtime.prompt(turns, think=think), embeds, self._limit(max_new_tokens), think)

    def _encode(self, audio: np.ndarray, *, think: bool = False) -> Any:
        """Encoder output, reused when the same samples come again (one entry, by content)."""
        data = np.ascontiguousarray(audio, dtype=np.float32)
        digest = hashlib.blake2b(data.tobytes(), digest_size=16).digest()
        key = digest + str((data.shape, think)).encode()
        with self._cache_lock:
            if self._last_encoded is not None and self._last_encoded[0] == key:
                return self._last_encoded[1]
        embeds = self.runtime.encode(data, think=think)
        with self._cache_lock:
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
    ) -> Generation:
        row = self.chat_row(turns, clips, think=think, max_new_tokens=max_new_tokens)
        return self.runtime.generate_batch([row], temperature=temperature)[0]

    def chat_stream(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        *,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> Generator[str, None, Generation]:
        row = self.chat_row(turns, clips, think=think, max_new_tokens=max_new_tokens)
        return (yield from self.runtime.stream(row, temperature=temperature))

    def speak(self, text: str) -> Speech:
        return espeak(text, voice=self.settings.tts_voice, binary=self.settings.espeak_binary)
