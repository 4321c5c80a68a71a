"""The python-backend models of ``model_repo/``; each ``model.py`` there imports one class.

Imported only inside Triton's python backend stub, where ``triton_python_backend_utils``
exists. Prompt building and both AF3 stages are Earshot's own (``earshot.af3``), exactly
what the local engine runs, so the two engines give the same tokens for the same input.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from earshot.af3.batching import DEFAULT_MAX_BATCH_ROWS, DEFAULT_MAX_BATCH_TOKENS, batches, row_length
from earshot.af3.runtime import AF3Runtime, Row, window_token_counts
from earshot.errors import EarshotError, InputError
from earshot.triton import protocol as p
from earshot.triton.backend import ModelArgs, load_stage

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_MAX_NEW_TOKENS_LIMIT = 4096
# Windows per encoder forward across batched requests: bounds activation memory on GPU.
DEFAULT_MAX_WINDOWS_PER_BATCH = 40


# ---- tensors in and out --------------------------------------------------------------------


def _to_torch(tensor: Any) -> Any:
    import torch

    if tensor.is_cpu():
        return torch.from_numpy(np.ascontiguousarray(tensor.as_numpy()))
    return torch.from_dlpack(tensor.to_dlpack())  # GPU tensors stay on the GPU


def _input(request: Any, name: str) -> Any | None:
    return pb_utils.get_input_tensor_by_name(request, name)


def _numpy(request: Any, name: str) -> np.ndarray | None:
    tensor = _input(request, name)
    if tensor is None:
        return None
    if tensor.is_cpu():
        return tensor.as_numpy()
    # With FORCE_CPU_ONLY_INPUT_TENSORS=no any input may arrive on the GPU.
    return _to_torch(tensor).cpu().numpy()


def _cell(arr: np.ndarray | None, row: int, col: int, default: Any) -> Any:
    """One scalar per (row, prompt): [k, n] gives each its own, [k, 1] one per row, [1] one for all."""
    if arr is None or arr.size == 0:
        return default
    grid = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(1, -1)
    return grid[min(row, grid.shape[0] - 1), min(col, grid.shape[1] - 1)].item()


def _texts(arr: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]


def _bytes_tensor(name: str, rows: Sequence[Sequence[str]]) -> Any:
    width = max((len(r) for r in rows), default=0)
    arr = np.empty((len(rows), width), dtype=np.object_)
    for i, row in enumerate(rows):
        for j, text in enumerate(row):
            arr[i, j] = text.encode("utf-8")
    return pb_utils.Tensor(name, arr)


def _float_tensor(name: str, value: Any) -> Any:
    from torch.utils.dlpack import to_dlpack

    return pb_utils.Tensor.from_dlpack(name, to_dlpack(value.float().contiguous()))


def _error(exc: BaseException) -> Any:
    """A Triton error carrying the Earshot code; bad input maps to INVALID_ARG."""
    if isinstance(exc, EarshotError):
        message = p.format_error(exc.code, exc.message, bad_input=isinstance(exc, InputError))
        code = exc.code
    else:
        message, code = p.format_error("internal_error", f"{type(exc).__name__}: {exc}"), "internal_error"
    status = pb_utils.TritonError.INVALID_ARG if isinstance(exc, InputError) else pb_utils.TritonError.INTERNAL
    pb_utils.Logger.log_warn(f"request failed ({code}): {message}")
    return pb_utils.TritonError(message, status)


def _each(requests: Sequence[Any], handle: Callable[[Any], Any]) -> list[Any]:
    """One response per request; one bad request never fails the others in its batch."""
    responses = []
    for request in requests:
        try:
            responses.append(handle(request))
        except Exception as exc:
            responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(exc)))
    return responses


# ---- af_whisper: audio -> embeddings -------------------------------------------------------


class AFWhisperModel:
    """16 kHz mono PCM [batch, samples] (+ valid ``audio_samples`` per row) -> projected
    AF-Whisper embeddings [batch, tokens, hidden] (zero-padded) and ``clip_tokens`` per row.

    A request may carry several audios of different lengths (the speech chunks of a segment):
    rows are zero-padded to the longest and ``audio_samples`` says how much of each is audio,
    so the padding is never encoded.
    """

    runtime: AF3Runtime
    max_windows: int

    def initialize(self, args: dict[str, str]) -> None:
        margs = ModelArgs.from_triton(args)
        self.runtime = load_stage(margs, "encoder")
        self.max_windows = max(1, margs.int_param(p.PARAM_MAX_WINDOWS_PER_BATCH, DEFAULT_MAX_WINDOWS_PER_BATCH))

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        # Validate and extract features per audio, then run the encoder over the windows of
        # every valid request together: that is where a GPU gains from batching.
        prepared: list[list[_Audio] | BaseException] = []
        for request in requests:
            try:
                rows = _audio_rows(request)
                modes = self._audio_modes(request, len(rows))
                prepared.append([_Audio(*self.runtime.features(a), m) for a, m in zip(rows, modes, strict=True)])
            except Exception as exc:
                prepared.append(exc)
        flat = [item for x in prepared if not isinstance(x, BaseException) for item in x]
        encoded: dict[int, Any] = {}
        for mode in (False, True):
            group = [(i, a) for i, a in enumerate(flat) if a.think == mode]
            for (i, _), out in zip(group, self._encode([a for _, a in group], think=mode), strict=True):
                encoded[i] = out
        embeds = iter(encoded[i] for i in range(len(flat)))
        responses = []
        for item in prepared:
            if isinstance(item, BaseException):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(item)))
                continue
            clips = [next(embeds) for _ in item]
            width = max(int(c.shape[0]) for c in clips)
            out = clips[0].new_zeros((len(clips), width, int(clips[0].shape[-1])))
            for i, clip in enumerate(clips):
                out[i, : clip.shape[0]] = clip
            tokens = np.array([[int(c.shape[0])] for c in clips], dtype=np.int32)
            responses.append(
                pb_utils.InferenceResponse(
                    [_float_tensor(p.AUDIO_EMBEDS, out), pb_utils.Tensor(p.CLIP_TOKENS, tokens)]
                )
            )
        return responses

    def _audio_modes(self, request: Any, n_rows: int) -> list[bool]:
        """Per audio row: encode with the think weights? (only when they change the encoder)."""
        think = _numpy(request, p.THINK)
        modes = []
        for r in range(n_rows):
            wanted = {bool(_cell(think, r, c, False)) for c in range(_width(think))}
            audio = {self.runtime.audio_mode(t) for t in wanted}
            if len(audio) > 1:
                raise InputError(
                    "the think weights change the audio encoder here: send think and plain "
                    "prompts about one audio in separate requests",
                    code="bad_request",
                )
            modes.append(audio.pop())
        return modes

    def _encode(self, items: Sequence[_Audio], *, think: bool) -> list[Any]:
        """Encoder output per item, windows of several items batched up to ``max_windows``."""
        import torch

        results: list[Any] = []
        group: list[_Audio] = []

        def flush() -> None:
            if not group:
                return
            feats = torch.cat([a.features for a in group])
            masks = torch.cat([a.mask for a in group])
            out = self.runtime.encode_features(feats, masks, think=think)
            tokens = [sum(window_token_counts(a.mask)) for a in group]
            results.extend(torch.split(out, tokens))
            group.clear()

        for item in items:
            if group and sum(int(a.features.shape[0]) for a in group) + int(item.features.shape[0]) > self.max_windows:
                flush()
            group.append(item)
        flush()
        return results

    def finalize(self) -> None:
        pass


@dataclass(frozen=True)
class _Audio:
    features: Any  # [windows, mel, frames]
    mask: Any  # [windows, frames]
    think: bool  # encode with the think weights on


def _width(arr: np.ndarray | None) -> int:
    """Columns of a per-prompt input ([k, n] -> n; absent or [1] -> 1)."""
    if arr is None or arr.size == 0 or arr.ndim < 2:
        return 1
    return int(arr.reshape(arr.shape[0], -1).shape[1])


def _audio_rows(request: Any) -> list[np.ndarray]:
    """The audios of one request, each cut to its valid length (``audio_samples``)."""
    audio = _numpy(request, p.AUDIO)
    if audio is None:
        raise InputError("missing input 'audio'", code="bad_request")
    rows = audio.reshape(1, -1) if audio.ndim == 1 else audio.reshape(audio.shape[0], -1)
    lengths = _numpy(request, p.AUDIO_SAMPLES)
    out = []
    for i, row in enumerate(rows):
        n = int(_cell(lengths, i, 0, row.shape[0]))
        if not 0 <= n <= row.shape[0]:
            raise InputError(
                f"audio_samples[{i}] = {n} is outside the row's {row.shape[0]} samples", code="bad_request"
            )
        out.append(np.ascontiguousarray(row[:n], dtype=np.float32))
    return out


# ---- af3_llm: embeddings + prompts -> text -------------------------------------------------


class _LLMBase:
    runtime: AF3Runtime
    default_max_new_tokens: int
    max_new_tokens_limit: int

    def _setup(self, args: dict[str, str]) -> ModelArgs:
        from earshot.af3.compiled import apply_decode_mode

        margs = ModelArgs.from_triton(args)
        self.runtime = load_stage(margs, "llm")
        self.default_max_new_tokens = margs.int_param(p.PARAM_MAX_NEW_TOKENS, DEFAULT_MAX_NEW_TOKENS)
        self.max_new_tokens_limit = margs.int_param(p.PARAM_MAX_NEW_TOKENS_LIMIT, DEFAULT_MAX_NEW_TOKENS_LIMIT)
        cache_len = margs.int_param(p.PARAM_MAX_CACHE_LEN, 0)
        apply_decode_mode(
            self.runtime, margs.param(p.PARAM_DECODE_MODE, "eager") or "eager", max_cache_len=cache_len or None
        )
        return margs

    def _options(self, request: Any, row: int, col: int) -> tuple[int, bool]:
        """(max_new_tokens, think) of one prompt: per prompt [k, n], per row [k, 1] or one value."""
        max_new = int(_cell(_numpy(request, p.MAX_NEW_TOKENS), row, col, self.default_max_new_tokens))
        if not 0 < max_new <= self.max_new_tokens_limit:
            raise InputError(
                f"max_new_tokens must be in 1..{self.max_new_tokens_limit}, got {max_new}",
                code="bad_request",
            )
        return max_new, bool(_cell(_numpy(request, p.THINK), row, col, False))

    @staticmethod
    def _temperature(request: Any) -> float:
        temperature = float(_cell(_numpy(request, p.TEMPERATURE), 0, 0, 0.0))
        if temperature < 0:
            raise InputError(f"temperature must be >= 0, got {temperature}", code="bad_request")
        return temperature

    def _clip(self, clip: Any) -> Any:
        hidden = self.runtime.model.config.text_config.hidden_size
        if clip.dim() != 2 or clip.shape[-1] != hidden:
            raise InputError(
                f"audio_embeds must be [tokens, {hidden}] per clip, got {list(clip.shape)}", code="bad_request"
            )
        return clip


class AF3LLMModel(_LLMBase):
    """Prompts [k, n] about k audios (embeddings [k, tokens, hidden], valid ``clip_tokens``
    per row) or about none, or one JSON ``conversation`` -> texts [k, n], why each stopped,
    token counts.

    Every prompt of every request Triton's dynamic batcher hands one ``execute`` goes through
    one batched generate (per temperature, up to ``max_batch_rows`` rows each): segments of
    several Celery workers decode together. One encoder pass serves all n prompts of a row;
    prompts are built with the checkpoint's template exactly as the local engine builds them.
    """

    max_rows: int
    max_tokens: int

    def initialize(self, args: dict[str, str]) -> None:
        margs = self._setup(args)
        self.max_rows = max(1, margs.int_param(p.PARAM_MAX_BATCH_ROWS, DEFAULT_MAX_BATCH_ROWS))
        self.max_tokens = max(1, margs.int_param(p.PARAM_MAX_BATCH_TOKENS, DEFAULT_MAX_BATCH_TOKENS))

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        plans: list[_Plan | BaseException] = []
        for request in requests:
            try:
                plans.append(self._plan(request))
            except Exception as exc:
                plans.append(exc)
        slots = [
            (i, cell, row, plan.temperature)
            for i, plan in enumerate(plans)
            if isinstance(plan, _Plan)
            for cell, row in plan.rows.items()
        ]
        answers: dict[tuple[int, tuple[int, int]], Any] = {}
        failed: dict[int, BaseException] = {}
        for temperature in sorted({t for *_, t in slots}):
            group = [s for s in slots if s[3] == temperature]
            for chunk in batches(group, self.max_rows, self.max_tokens, lambda s: row_length(s[2])):
                try:
                    gens = self.runtime.generate_batch([row for _, _, row, _ in chunk], temperature=temperature)
                except Exception as exc:  # fails only the requests with a row in this batch
                    for i, *_ in chunk:
                        failed.setdefault(i, exc)
                    continue
                for (i, cell, _, _), gen in zip(chunk, gens, strict=True):
                    answers[(i, cell)] = gen
        responses = []
        for i, plan in enumerate(plans):
            error = plan if isinstance(plan, BaseException) else failed.get(i)
            if error is not None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(error)))
                continue
            assert isinstance(plan, _Plan)
            responses.append(self._response(plan, {cell: answers[(i, cell)] for cell in plan.rows}))
        return responses

    def _plan(self, request: Any) -> _Plan:
        from earshot.af3.chat import single_turn
        from earshot.af3.runtime import Row

        temperature = self._temperature(request)
        clips = self._request_clips(request)
        conversation = _numpy(request, p.CONVERSATION)
        prompts = _numpy(request, p.PROMPTS)
        if (conversation is None) == (prompts is None):
            raise InputError("send exactly one of 'prompts' and 'conversation'", code="bad_request")
        if conversation is not None:
            if conversation.size != 1:
                raise InputError("'conversation' must hold exactly one JSON text", code="bad_request")
            turns = p.decode_turns(_texts(conversation)[0])
            row_clips = clips[0] if clips else []
            p.check_conversation(turns, len(row_clips))
            max_new, think = self._options(request, 0, 0)
            prompt = self.runtime.prompt(turns, think=think)
            return _Plan((1, 1), temperature, {(0, 0): Row(prompt, row_clips, max_new, think)})
        assert prompts is not None
        grid = prompts.reshape(1, -1) if prompts.ndim == 1 else prompts.reshape(prompts.shape[0], -1)
        if clips and len(clips) != grid.shape[0]:
            raise InputError(
                f"{grid.shape[0]} prompt rows for {len(clips)} audio rows", code="prompt_audio_mismatch"
            )
        rows: dict[tuple[int, int], Any] = {}
        for r, texts in enumerate(grid):
            row_clips = clips[r] if clips else []
            for c, text in enumerate(_texts(texts)):
                max_new, think = self._options(request, r, c)
                prompt = single_turn(self.runtime.tokenizer, text, n_audio=len(row_clips), think=think)
                rows[(r, c)] = Row(prompt, row_clips, max_new, think)
        return _Plan((int(grid.shape[0]), int(grid.shape[1])), temperature, rows)

    def _request_clips(self, request: Any) -> list[list[Any]]:
        """One list of clip embeddings per row ([] rows: no audio in this request)."""
        given = _input(request, p.AUDIO_EMBEDS)
        if given is None:
            return []
        embeds = _to_torch(given)
        if embeds.numel() == 0:
            return []
        if embeds.dim() == 2:
            embeds = embeds.unsqueeze(0)
        tokens = _numpy(request, p.CLIP_TOKENS)
        out = []
        for r in range(int(embeds.shape[0])):
            n = int(_cell(tokens, r, 0, embeds.shape[1]))
            if not 0 < n <= embeds.shape[1]:
                raise InputError(f"clip_tokens[{r}] = {n} does not fit {int(embeds.shape[1])} rows", code="bad_request")
            out.append([self._clip(embeds[r, :n])])
        return out

    def _response(self, plan: _Plan, gens: dict[tuple[int, int], Any]) -> Any:
        k, n = plan.shape
        text = [[gens[(r, c)].text for c in range(n)] for r in range(k)]
        stop = [[gens[(r, c)].stop for c in range(n)] for r in range(k)]
        new = np.array([[gens[(r, c)].new_tokens for c in range(n)] for r in range(k)], dtype=np.int32)
        prompt = np.array([[gens[(r, c)].prompt_tokens for c in range(n)] for r in range(k)], dtype=np.int32)
        adapter = np.array([[bool(gens[(r, c)].adapter) for c in range(n)] for r in range(k)], dtype=np.bool_)
        loaded = np.full((k, 1), self.runtime.think_loaded, dtype=np.bool_)
        return pb_utils.InferenceResponse(
            [
                _bytes_tensor(p.TEXT, text),
                _bytes_tensor(p.STOP_REASON, stop),
                pb_utils.Tensor(p.NEW_TOKENS, new),
                pb_utils.Tensor(p.PROMPT_TOKENS, prompt),
                pb_utils.Tensor(p.ADAPTER, adapter),
                pb_utils.Tensor(p.THINK_ADAPTER, loaded),
            ]
        )

    def finalize(self) -> None:
        pass


@dataclass
class _Plan:
    """One request's prompts, ready for the batch: (row, column) -> runtime Row."""

    shape: tuple[int, int]
    temperature: float
    rows: dict[tuple[int, int], Any]


# ---- af3_llm_stream: the same LLM, decoupled, one response per text piece ----------------


class AF3LLMStreamModel(_LLMBase):
    """One prompt or a whole conversation (+ audio clips) -> text pieces, then ``final=True``.

    Clips come as raw ``audio`` (all clips concatenated, split by ``audio_samples``; each is
    encoded on its own by ``af_whisper`` via BLS, so a client needs one call) or as ready
    ``audio_embeds`` (split by ``clip_tokens``). A conversation is JSON turns rendered with
    the checkpoint's template as the local engine renders it; a plain prompt is ``single_turn``.
    """

    def initialize(self, args: dict[str, str]) -> None:
        self._setup(args)
        # Decoupled: execute() hands requests to a worker and returns, so one long stream
        # does not keep Triton from queueing the next request.
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def execute(self, requests: Sequence[Any]) -> None:
        for request in requests:
            thread = threading.Thread(target=self._stream, args=(request,), daemon=True)
            thread.start()
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return None

    def _stream(self, request: Any) -> None:
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            max_new, think = self._options(request, 0, 0)
            temperature = self._temperature(request)
            clips = self._clip_embeddings(request)
            chat = self._prompt(request, len(clips), think)
            for piece in self.runtime.stream(Row(chat, clips, max_new, think), temperature=temperature):
                sender.send(self._piece(piece, False))
            sender.send(self._piece("", True), flags=final)
        except Exception as exc:
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=_error(exc)), flags=final)

    def _prompt(self, request: Any, n_clips: int, think: bool) -> str:
        from earshot.af3.chat import single_turn

        conversation = _numpy(request, p.CONVERSATION)
        prompt = _numpy(request, p.PROMPT)
        if (conversation is None) == (prompt is None):
            raise InputError("send exactly one of 'prompt' and 'conversation'", code="bad_request")
        if prompt is not None:
            if prompt.size != 1:
                raise InputError("'prompt' must hold exactly one text", code="bad_request")
            return single_turn(self.runtime.tokenizer, _texts(prompt)[0], n_audio=n_clips, think=think)
        assert conversation is not None
        turns = p.decode_turns(_texts(conversation)[0])
        p.check_conversation(turns, n_clips)
        return self.runtime.prompt(turns, think=think)

    def _clip_embeddings(self, request: Any) -> list[Any]:
        import torch

        given = _input(request, p.AUDIO_EMBEDS)
        if given is not None:
            embeds = _to_torch(given)
            embeds = embeds.reshape(-1, embeds.shape[-1])
            sizes = _numpy(request, p.CLIP_TOKENS)
            counts = [int(n) for n in sizes.reshape(-1)] if sizes is not None else [int(embeds.shape[0])]
            if sum(counts) != embeds.shape[0] or min(counts, default=1) < 1:
                raise InputError(
                    f"clip_tokens {counts} do not split {int(embeds.shape[0])} embedding rows",
                    code="bad_request",
                )
            return [self._clip(clip) for clip in torch.split(embeds, counts)]
        think = bool(_cell(_numpy(request, p.THINK), 0, 0, False))
        audio = _numpy(request, p.AUDIO)
        if audio is None:
            return []
        flat = audio.reshape(-1).astype(np.float32)
        lengths = _numpy(request, p.AUDIO_SAMPLES)
        counts = [int(n) for n in lengths.reshape(-1)] if lengths is not None else [flat.shape[0]]
        if sum(counts) != flat.shape[0] or min(counts, default=0) < 0:
            raise InputError(
                f"audio_samples {counts} do not split {flat.shape[0]} samples", code="bad_request"
            )
        bounds = np.cumsum([0, *counts])
        return [self._encode(flat[a:b], think) for a, b in itertools.pairwise(bounds)]

    @staticmethod
    def _encode(clip: np.ndarray, think: bool) -> Any:
        response = pb_utils.InferenceRequest(
            model_name=p.ENCODER,
            requested_output_names=[p.AUDIO_EMBEDS],
            inputs=[
                pb_utils.Tensor(p.AUDIO, clip.reshape(1, -1)),
                pb_utils.Tensor(p.THINK, np.array([[think]], dtype=np.bool_)),
            ],
        ).exec()
        if response.has_error():
            code, bad_input, message = p.parse_error(response.error().message())
            if bad_input:
                raise InputError(message, code=code)
            raise RuntimeError(message)
        out = _to_torch(pb_utils.get_output_tensor_by_name(response, p.AUDIO_EMBEDS))
        return out.reshape(-1, out.shape[-1])

    @staticmethod
    def _piece(text: str, final: bool) -> Any:
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor(p.TEXT, np.array([text.encode("utf-8")], dtype=np.object_)),
                pb_utils.Tensor(p.FINAL, np.array([final], dtype=np.bool_)),
            ]
        )

    def finalize(self) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=30)


# ---- tts: text -> waveform ----------------------------------------------------------------


class TTSModel:
    """Texts [batch, n] -> waveform [batch, samples] (zero-padded), samples, sample_rate, voice.

    A row's n texts are spoken as one passage. eSpeak NG unless a neural voice is configured.
    """

    def initialize(self, args: dict[str, str]) -> None:
        from earshot.triton.voices import load_voice

        margs = ModelArgs.from_triton(args)
        self.voice = load_voice(margs)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return _each(requests, self._one)

    def _one(self, request: Any) -> Any:
        texts = _numpy(request, p.TEXT)
        if texts is None:
            raise InputError("missing input 'text'", code="bad_request")
        rows = texts.reshape(1, -1) if texts.ndim == 1 else texts
        spoken = [self.voice.speak(" ".join(t.strip() for t in _texts(row))) for row in rows]
        width = max(len(s.samples) for s in spoken)
        wave = np.zeros((len(spoken), width), dtype=np.float32)
        for i, s in enumerate(spoken):
            wave[i, : len(s.samples)] = s.samples
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor(p.WAVEFORM, wave),
                pb_utils.Tensor(p.SAMPLES, np.array([[len(s.samples)] for s in spoken], dtype=np.int32)),
                pb_utils.Tensor(p.SAMPLE_RATE, np.array([[s.sample_rate] for s in spoken], dtype=np.int32)),
                pb_utils.Tensor(p.VOICE, np.array([[s.voice.encode()] for s in spoken], dtype=np.object_)),
            ]
        )

    def finalize(self) -> None:
        pass
