"""Triton engine: the same Engine as the local one, with inference on a Triton server (gRPC).

Plain prompts and raw audio go to the ``af3`` ensemble (af_whisper -> af3_llm); ChatML is
built server-side with the same ``single_turn`` the local engine uses, so for the same input
and greedy decoding both engines return the same text. Text-only prompts go to ``af3_llm``,
speech to ``tts``.

A server restart must not fail a job: UNAVAILABLE is retried with backoff for
``triton_retry_budget_s``, then surfaces as the retryable ``EngineUnavailable`` so the task
layer retries or fails the job with the reason. Every request is idempotent (greedy, no
server-side state), so repeating one is safe.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import soundfile as sf

from earshot.af3.chat import Turn
from earshot.config import Settings
from earshot.errors import EarshotError, EngineError, EngineUnavailable, InputError
from earshot.speech import Speech
from earshot.triton import protocol as p
from earshot.triton.protocol import check_conversation

log = logging.getLogger("earshot.engines.triton")
T = TypeVar("T")

# Errors that mean "not now" rather than "never": the server is stopping or starting (models
# unloaded while the endpoint is still up), or a model's stub is being restarted.
_TRANSIENT_STATUS = ("UNAVAILABLE",)
_TRANSIENT_TEXT = (
    "has no available versions",
    "is not ready",
    "stub process is not healthy",
    "server is stopping",
    "socket closed",
)


class TritonEngine:
    name = "triton"

    def __init__(self, settings: Settings, *, url: str | None = None) -> None:
        self.settings = settings
        self.url = url or settings.triton_url
        self.timeout_s = settings.triton_timeout_s
        self.retry_budget_s = settings.triton_retry_budget_s
        self._slots = threading.BoundedSemaphore(max(1, settings.triton_max_concurrency))
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._model_id: str | None = None
        self._think_adapter: bool | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TritonEngine:
        return cls(settings)

    # ---- Engine ---------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            self._model_id = self._served_model_id()
        return self._model_id

    @property
    def has_think_adapter(self) -> bool:
        if self._think_adapter is None:
            # Nothing asked the LLM yet: one token of a text-only prompt tells.
            self.generate(["Hello."], max_new_tokens=1)
        return bool(self._think_adapter)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        audio: np.ndarray | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        think: bool = False,
    ) -> list[str]:
        if not prompts:
            return []
        from tritonclient.grpc import InferInput, InferRequestedOutput

        limit = max_new_tokens or self.settings.max_new_tokens
        inputs = [
            _tensor(InferInput, p.PROMPTS, np.array([[s.encode("utf-8") for s in prompts]], dtype=np.object_)),
            _tensor(InferInput, p.MAX_NEW_TOKENS, np.array([[limit]], dtype=np.int32)),
            _tensor(InferInput, p.TEMPERATURE, np.array([[temperature]], dtype=np.float32)),
            _tensor(InferInput, p.THINK, np.array([[think]], dtype=np.bool_)),
        ]
        model = p.LLM
        if audio is not None:
            inputs.insert(0, _tensor(InferInput, p.AUDIO, _audio_row(audio)))
            model = p.ENSEMBLE
        outputs = [InferRequestedOutput(p.TEXT), InferRequestedOutput(p.THINK_ADAPTER)]
        result = self._infer(model, inputs, outputs)
        texts = [_decode(v) for v in result.as_numpy(p.TEXT).reshape(-1)]
        if len(texts) != len(prompts):
            raise EngineError(
                f"Triton {model} returned {len(texts)} answers for {len(prompts)} prompts",
                code="engine_bad_response",
            )
        self._think_adapter = bool(result.as_numpy(p.THINK_ADAPTER).reshape(-1)[0])
        return texts

    def speak(self, text: str) -> Speech:
        from tritonclient.grpc import InferInput

        arr = np.array([[text.encode("utf-8")]], dtype=np.object_)
        result = self._infer(p.TTS, [_tensor(InferInput, p.TEXT, arr)], None)
        n = int(result.as_numpy(p.SAMPLES).reshape(-1)[0])
        wave = result.as_numpy(p.WAVEFORM)[0, :n]  # rows are zero-padded to the batch's longest
        rate = int(result.as_numpy(p.SAMPLE_RATE).reshape(-1)[0])
        voice = _decode(result.as_numpy(p.VOICE).reshape(-1)[0])
        buf = io.BytesIO()
        # 16-bit PCM like eSpeak's own output, so a WAV is the same size from either engine.
        sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
        return Speech(wav=buf.getvalue(), sample_rate=rate, duration_s=n / rate if rate else 0.0, voice=voice)

    # ---- conversations and streaming (af3_llm_stream, gRPC) ---------------------------------

    def chat(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        *,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> str:
        # Collected whole, so a stream cut by a restart can be repeated from the start.
        check_conversation(turns, len(clips))
        return self._retrying(
            lambda: "".join(
                self._stream_pieces(
                    conversation=turns, clips=clips, think=think,
                    max_new_tokens=max_new_tokens, temperature=temperature,
                )
            ),
            p.LLM_STREAM,
        )

    def chat_stream(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        *,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> Iterator[str]:
        check_conversation(turns, len(clips))
        yield from self._stream_pieces(
            conversation=turns, clips=clips, think=think, max_new_tokens=max_new_tokens,
            temperature=temperature,
        )

    def stream(
        self,
        prompt: str,
        *,
        audio: np.ndarray | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        think: bool = False,
    ) -> Iterator[str]:
        """Pieces of one answer about ``audio`` as they are generated; joined = :meth:`generate`'s."""
        yield from self._stream_pieces(
            prompt=prompt, clips=[audio] if audio is not None else [], think=think,
            max_new_tokens=max_new_tokens, temperature=temperature,
        )

    def _stream_pieces(
        self,
        *,
        clips: Sequence[np.ndarray],
        think: bool,
        max_new_tokens: int | None,
        temperature: float,
        prompt: str | None = None,
        conversation: Sequence[Turn] | None = None,
    ) -> Iterator[str]:
        """One decoupled request; pieces until the response marked final.

        Not retried here: a stream cut halfway cannot be resumed without repeating text.
        """
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        make = grpcclient.InferInput
        inputs = [
            _tensor(make, p.MAX_NEW_TOKENS, np.array([max_new_tokens or self.settings.max_new_tokens], dtype=np.int32)),
            _tensor(make, p.TEMPERATURE, np.array([temperature], dtype=np.float32)),
            _tensor(make, p.THINK, np.array([think], dtype=np.bool_)),
        ]
        if conversation is not None:
            text = p.encode_turns(conversation).encode("utf-8")
            inputs.append(_tensor(make, p.CONVERSATION, np.array([text], dtype=np.object_)))
        else:
            inputs.append(_tensor(make, p.PROMPT, np.array([(prompt or "").encode("utf-8")], dtype=np.object_)))
        if clips:
            rows = [_audio_row(c)[0] for c in clips]
            inputs.append(_tensor(make, p.AUDIO, np.concatenate(rows)))
            inputs.append(_tensor(make, p.AUDIO_SAMPLES, np.array([r.shape[0] for r in rows], dtype=np.int32)))
        events: queue.Queue[tuple[Any, Any]] = queue.Queue()
        # A stream belongs to one client object; the shared one keeps serving generate().
        client = grpcclient.InferenceServerClient(self.url)
        with self._slots:
            try:
                client.start_stream(callback=lambda result, error: events.put((result, error)))
                client.async_stream_infer(p.LLM_STREAM, inputs)
                while True:
                    try:
                        result, error = events.get(timeout=self.timeout_s)
                    except queue.Empty:
                        raise EngineUnavailable(
                            f"no streamed response from Triton at {self.url} within {self.timeout_s:g} s",
                            code="engine_timeout",
                        ) from None
                    if error is not None:
                        raise self._map_error(error, p.LLM_STREAM)
                    piece = _decode(result.as_numpy(p.TEXT).reshape(-1)[0])
                    if piece:
                        yield piece
                    if bool(result.as_numpy(p.FINAL).reshape(-1)[0]):
                        return
            except InferenceServerException as exc:
                raise self._map_error(exc, p.LLM_STREAM) from exc
            finally:
                with contextlib.suppress(Exception):
                    client.stop_stream(cancel_requests=True)
                    client.close()

    # ---- plumbing -------------------------------------------------------------------------

    def _client_or_new(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from tritonclient.grpc import InferenceServerClient

                self._client = InferenceServerClient(self.url)
            return self._client

    def _drop_client(self, client: Any) -> None:
        # A fresh channel connects at once; a channel in backoff after an outage may wait
        # many seconds before it even tries the restarted server again.
        with self._client_lock:
            if self._client is client:
                self._client = None
        try:
            client.close()
        except Exception:
            log.debug("closing a broken Triton client failed", exc_info=True)

    def _infer(self, model: str, inputs: list[Any], outputs: list[Any] | None) -> Any:
        from tritonclient.utils import InferenceServerException

        def call() -> Any:
            client = self._client_or_new()
            try:
                with self._slots:
                    return client.infer(model, inputs, outputs=outputs, client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                error = self._map_error(exc, model)
                if _is_outage(error):
                    self._drop_client(client)
                raise error from exc

        return self._retrying(call, model)

    def _retrying(self, call: Callable[[], T], what: str) -> T:
        """``call()`` until it succeeds, fails for good, or the server stays away too long."""
        deadline = time.monotonic() + self.retry_budget_s
        delay = 0.25
        attempts = 0
        while True:
            attempts += 1
            try:
                return call()
            except EngineUnavailable as error:
                if not _is_outage(error):
                    raise
                wait = delay * random.uniform(0.8, 1.2)
                if time.monotonic() + wait > deadline:
                    raise EngineUnavailable(
                        f"Triton at {self.url} unavailable for {self.retry_budget_s:g} s "
                        f"({attempts} attempts at {what}): {error.message}",
                    ) from error
                log.warning("Triton %s unavailable (%s); retrying in %.1f s", what, error.message, wait)
                time.sleep(wait)
                delay = min(delay * 2, 5.0)

    def _map_error(self, exc: Any, model: str) -> EarshotError:
        status = str(exc.status() or "") if hasattr(exc, "status") else ""
        raw = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
        raw = raw or str(exc)
        code, bad_input, message = p.parse_error(raw)
        lowered = raw.lower()
        if any(s in status for s in _TRANSIENT_STATUS) or any(t in lowered for t in _TRANSIENT_TEXT):
            return EngineUnavailable(f"{status or 'error'}: {raw}".strip())
        if "DEADLINE_EXCEEDED" in status:
            return EngineUnavailable(
                f"Triton {model} did not answer within {self.timeout_s:g} s (EARSHOT_TRITON_TIMEOUT_S)",
                code="engine_timeout",
            )
        if bad_input:
            return InputError(message, code=code)
        return EngineError(f"Triton {model}: {message}", code=code or "engine_error")

    def _served_model_id(self) -> str:
        """The weights the server's af3_llm loads, when its config names them plainly."""
        fallback = f"triton://{self.url}/{p.LLM}"
        from tritonclient.utils import InferenceServerException

        try:
            config = self._client_or_new().get_model_config(p.LLM, as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException:
            return fallback
        params = config.get("config", config).get("parameters", {})
        value = str(params.get(p.PARAM_MODEL_PATH, {}).get("string_value", ""))
        return value if value and "$" not in value else fallback

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _is_outage(error: EarshotError) -> bool:
    """Worth waiting for: the server or a stub is away (a timeout is the task layer's call)."""
    return isinstance(error, EngineUnavailable) and error.code == "engine_unavailable"


def _tensor(factory: Callable[[str, list[int], str], Any], name: str, arr: np.ndarray) -> Any:
    from tritonclient.utils import np_to_triton_dtype

    tensor = factory(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    tensor.set_data_from_numpy(arr)
    return tensor


def _audio_row(audio: np.ndarray) -> np.ndarray:
    arr = np.asarray(audio, dtype=np.float32)
    if arr.ndim != 1:
        raise InputError("audio must be mono (one dimension)", code="bad_audio_shape")
    return np.ascontiguousarray(arr.reshape(1, -1))


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
