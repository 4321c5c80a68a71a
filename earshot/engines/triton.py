"""Triton engine: the same Engine as the local one, with inference on a Triton server (gRPC).

Plain prompts and raw audio go to the ``af3`` ensemble (af_whisper -> af3_llm), several
audios per request; prompts are built server-side with the checkpoint's template exactly as
the local engine builds them, so for the same input and greedy decoding both engines return
the same Generations. Text-only prompts go to ``af3_llm``, speech to ``tts``.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import soundfile as sf

from earshot.af3.chat import Turn
from earshot.config import Settings
from earshot.engines.base import Ask, Generation
from earshot.errors import EarshotError, EngineError, EngineUnavailable, InputError
from earshot.speech import Speech
from earshot.triton import protocol as p
from earshot.triton.protocol import check_conversation

log = logging.getLogger("earshot.engines.triton")
T = TypeVar("T")

# Audio rows per af3 request (below the ensemble's max_batch_size of 64): a segment's speech
# chunks travel as a few requests that the server's batcher merges again.
ROWS_PER_REQUEST = 16

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
            self.generate([Ask("Hello.", max_new_tokens=1)])
        return bool(self._think_adapter)

    def generate(
        self,
        asks: Sequence[Ask],
        *,
        audios: Sequence[np.ndarray] = (),
        temperature: float = 0.0,
    ) -> list[Generation]:
        """Every ask in as few requests as the wire allows, sent at once; answers in ask order.

        Asks about audio go to the ``af3`` ensemble: one request row per audio (zero-padded,
        with its valid length), that audio's asks as the row's prompts, so each audio is
        encoded once. A request's rows share a prompt count and a think flag (think weights
        may change the encoder), so a segment's three prompts and its speech chunks' single
        prompts travel as two requests. Text-only asks go to ``af3_llm``. On the server the
        dynamic batcher merges these requests, and other workers', into batched generates.
        """
        if not asks:
            return []
        for ask in asks:
            if ask.audio is not None and not 0 <= ask.audio < len(audios):
                raise InputError(
                    f"an ask refers to audio {ask.audio} of {len(audios)}", code="prompt_audio_mismatch"
                )
        calls = self._plan(asks, audios, temperature)
        answers: list[Generation | None] = [None] * len(asks)
        for call, result in zip(calls, self._infer_all(calls), strict=True):
            for (r, c), gen in _generations(result, call.slots).items():
                answers[call.slots[r][c]] = gen
        out = [a for a in answers if a is not None]
        if len(out) != len(asks):
            raise EngineError(
                f"Triton returned {len(out)} answers for {len(asks)} prompts", code="engine_bad_response"
            )
        return out

    def _plan(self, asks: Sequence[Ask], audios: Sequence[np.ndarray], temperature: float) -> list[_Call]:
        from tritonclient.grpc import InferInput

        limit = self.settings.max_new_tokens
        text_only = [i for i, a in enumerate(asks) if a.audio is None]
        # (audio, think) -> ask indices; one request row each
        rows: dict[tuple[int, bool], list[int]] = {}
        for i, ask in enumerate(asks):
            if ask.audio is not None:
                rows.setdefault((ask.audio, ask.think), []).append(i)
        calls: list[_Call] = []
        if text_only:
            slots = [text_only]
            calls.append(_Call(p.LLM, _prompt_inputs(InferInput, asks, slots, limit, temperature), slots))
        groups: dict[tuple[bool, int], list[tuple[int, list[int]]]] = {}
        for (audio, think), idx in rows.items():
            groups.setdefault((think, len(idx)), []).append((audio, idx))
        for members in groups.values():
            # Similar lengths share a request: rows are padded to the longest.
            members.sort(key=lambda m: len(audios[m[0]]))
            for start in range(0, len(members), ROWS_PER_REQUEST):
                part = members[start : start + ROWS_PER_REQUEST]
                slots = [idx for _, idx in part]
                inputs = _prompt_inputs(InferInput, asks, slots, limit, temperature)
                inputs += _audio_inputs(InferInput, [audios[a] for a, _ in part])
                calls.append(_Call(p.ENSEMBLE, inputs, slots))
        return calls

    def _infer_all(self, calls: Sequence[_Call]) -> list[Any]:
        """All requests in flight together (each retried on its own; bounded by the slots)."""
        outputs = [p.TEXT, p.STOP_REASON, p.NEW_TOKENS, p.PROMPT_TOKENS, p.ADAPTER, p.THINK_ADAPTER]
        from tritonclient.grpc import InferRequestedOutput

        def one(call: _Call) -> Any:
            result = self._infer(call.model, call.inputs, [InferRequestedOutput(o) for o in outputs])
            self._think_adapter = bool(result.as_numpy(p.THINK_ADAPTER).reshape(-1)[0])
            return result

        if len(calls) == 1:
            return [one(calls[0])]
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            return list(pool.map(one, calls))

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

    # ---- conversations ----------------------------------------------------------------------

    def chat(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        *,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> Generation:
        # The batched LLM (af3 / af3_llm with a conversation): batched with other requests,
        # with a stop reason and token counts, and retried whole after an outage.
        inputs = self._conversation_inputs(turns, clips, think, max_new_tokens, temperature, stream=False)
        call = _Call(p.ENSEMBLE if clips else p.LLM, inputs, [[0]])
        return _generations(self._infer_all([call])[0], call.slots)[(0, 0)]

    def chat_stream(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        *,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> Iterator[str]:
        inputs = self._conversation_inputs(turns, clips, think, max_new_tokens, temperature, stream=True)
        yield from self._stream_pieces(inputs)

    def _conversation_inputs(
        self,
        turns: Sequence[Turn],
        clips: Sequence[np.ndarray],
        think: bool,
        max_new_tokens: int | None,
        temperature: float,
        *,
        stream: bool,
    ) -> list[Any]:
        """One conversation as inputs of af3 / af3_llm (``stream=False``: with a batch
        dimension) or of af3_llm_stream (without one; raw clips encoded server-side)."""
        from tritonclient.grpc import InferInput

        check_conversation(turns, len(clips))

        def value(arr: np.ndarray) -> np.ndarray:
            return arr.reshape(-1) if stream else arr.reshape(1, -1)

        limit = max_new_tokens or self.settings.max_new_tokens
        inputs = [
            _tensor(InferInput, p.CONVERSATION, value(np.array([p.encode_turns(turns).encode("utf-8")], dtype=np.object_))),
            _tensor(InferInput, p.MAX_NEW_TOKENS, value(np.array([limit], dtype=np.int32))),
            _tensor(InferInput, p.TEMPERATURE, value(np.array([temperature], dtype=np.float32))),
            _tensor(InferInput, p.THINK, value(np.array([think], dtype=np.bool_))),
        ]
        if clips and stream:
            rows = [_audio_row(c)[0] for c in clips]
            inputs.append(_tensor(InferInput, p.AUDIO, np.concatenate(rows)))
            inputs.append(_tensor(InferInput, p.AUDIO_SAMPLES, np.array([r.shape[0] for r in rows], dtype=np.int32)))
        elif clips:
            inputs += _audio_inputs(InferInput, clips)
        return inputs

    def _stream_pieces(self, inputs: list[Any]) -> Iterator[str]:
        """One decoupled request; pieces until the response marked final.

        Not retried here: a stream cut halfway cannot be resumed without repeating text.
        """
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

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


@dataclass(frozen=True)
class _Call:
    """One request: its model, inputs, and which ask each (row, column) answers."""

    model: str
    inputs: list[Any]
    slots: list[list[int]]


def _prompt_inputs(
    factory: Callable[[str, list[int], str], Any],
    asks: Sequence[Ask],
    slots: Sequence[Sequence[int]],
    default_limit: int,
    temperature: float,
) -> list[Any]:
    """prompts, max_new_tokens and think [rows, n] (one cell per ask) and temperature [rows, 1]."""
    grid = [[asks[i] for i in row] for row in slots]
    prompts = np.array([[a.prompt.encode("utf-8") for a in row] for row in grid], dtype=np.object_)
    limits = np.array([[a.max_new_tokens or default_limit for a in row] for row in grid], dtype=np.int32)
    think = np.array([[a.think for a in row] for row in grid], dtype=np.bool_)
    return [
        _tensor(factory, p.PROMPTS, prompts),
        _tensor(factory, p.MAX_NEW_TOKENS, limits),
        _tensor(factory, p.THINK, think),
        _tensor(factory, p.TEMPERATURE, np.full((len(grid), 1), temperature, dtype=np.float32)),
    ]


def _audio_inputs(factory: Callable[[str, list[int], str], Any], audios: Sequence[np.ndarray]) -> list[Any]:
    """audio [rows, longest] zero-padded, and each row's valid samples."""
    rows = [_audio_row(a)[0] for a in audios]
    width = max(len(r) for r in rows)
    audio = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        audio[i, : len(row)] = row
    lengths = np.array([[len(r)] for r in rows], dtype=np.int32)
    return [_tensor(factory, p.AUDIO, audio), _tensor(factory, p.AUDIO_SAMPLES, lengths)]


def _generations(result: Any, slots: Sequence[Sequence[int]]) -> dict[tuple[int, int], Generation]:
    """Each (row, column) answer of one response, as the runtime's Generation."""
    text = result.as_numpy(p.TEXT)
    stop = result.as_numpy(p.STOP_REASON)
    new = result.as_numpy(p.NEW_TOKENS)
    prompt = result.as_numpy(p.PROMPT_TOKENS)
    adapter = result.as_numpy(p.ADAPTER)
    want = (len(slots), max(len(r) for r in slots))
    if tuple(text.shape) != want:
        raise EngineError(
            f"Triton returned answers shaped {list(text.shape)} for {list(want)} prompts",
            code="engine_bad_response",
        )
    out: dict[tuple[int, int], Generation] = {}
    for r, row in enumerate(slots):
        for c in range(len(row)):
            reason = _decode(stop[r, c])
            if reason not in ("eos", "length"):
                raise EngineError(f"Triton returned stop reason {reason!r}", code="engine_bad_response")
            out[(r, c)] = Generation(
                text=_decode(text[r, c]),
                stop="eos" if reason == "eos" else "length",
                prompt_tokens=int(prompt[r, c]),
                new_tokens=int(new[r, c]),
                adapter=bool(adapter[r, c]),
            )
    return out


def _audio_row(audio: np.ndarray) -> np.ndarray:
    arr = np.asarray(audio, dtype=np.float32)
    if arr.ndim != 1:
        raise InputError("audio must be mono (one dimension)", code="bad_audio_shape")
    return np.ascontiguousarray(arr.reshape(1, -1))


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
