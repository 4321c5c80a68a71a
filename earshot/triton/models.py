"""The python-backend models of ``model_repo/``; each ``model.py`` there imports one class.

Imported only inside Triton's python backend stub, where ``triton_python_backend_utils``
exists. Prompt building and both AF3 stages are Earshot's own (``earshot.af3``), exactly
what the local engine runs, so the two engines give the same tokens for the same input.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from earshot.af3.chat import chatml, single_turn
from earshot.af3.runtime import AF3Runtime, window_token_counts
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


def _row_value(arr: np.ndarray | None, row: int, default: Any) -> Any:
    """One scalar per batch row; a single value serves every row."""
    if arr is None or arr.size == 0:
        return default
    flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    return flat[min(row, flat.shape[0] - 1), 0].item()


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
    """16 kHz mono PCM [batch, samples] -> projected AF-Whisper embeddings [batch, tokens, hidden]."""

    runtime: AF3Runtime
    max_windows: int

    def initialize(self, args: dict[str, str]) -> None:
        margs = ModelArgs.from_triton(args)
        self.runtime = load_stage(margs, "encoder")
        self.max_windows = max(1, margs.int_param(p.PARAM_MAX_WINDOWS_PER_BATCH, DEFAULT_MAX_WINDOWS_PER_BATCH))

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        import torch

        # Validate and extract features per request, then run the encoder over the windows
        # of every valid request together: that is where a GPU gains from batching.
        prepared: list[tuple[torch.Tensor, torch.Tensor] | BaseException] = []
        for request in requests:
            try:
                audio = _numpy(request, p.AUDIO)
                if audio is None:
                    raise InputError("missing input 'audio'", code="bad_request")
                rows = audio.reshape(1, -1) if audio.ndim == 1 else audio
                feats = [self.runtime.features(np.asarray(row, dtype=np.float32)) for row in rows]
                prepared.append((torch.cat([f for f, _ in feats]), torch.cat([m for _, m in feats])))
            except Exception as exc:
                prepared.append(exc)
        embeds = self._encode([x for x in prepared if not isinstance(x, BaseException)])
        responses = []
        it = iter(embeds)
        for request, item in zip(requests, prepared, strict=True):
            if isinstance(item, BaseException):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(item)))
                continue
            audio = _numpy(request, p.AUDIO)
            n_rows = 1 if audio is None or audio.ndim == 1 else audio.shape[0]
            out = next(it)
            per_row = out.reshape(n_rows, -1, out.shape[-1])
            responses.append(pb_utils.InferenceResponse([_float_tensor(p.AUDIO_EMBEDS, per_row)]))
        return responses

    def _encode(self, items: Sequence[tuple[Any, Any]]) -> list[Any]:
        """Encoder output per item, windows of several items batched up to ``max_windows``."""
        import torch

        results: list[Any] = []
        group: list[tuple[Any, Any]] = []

        def flush() -> None:
            if not group:
                return
            feats = torch.cat([f for f, _ in group])
            masks = torch.cat([m for _, m in group])
            out = self.runtime.encode_features(feats, masks)
            tokens = [sum(window_token_counts(m)) for _, m in group]
            results.extend(torch.split(out, tokens))
            group.clear()

        for item in items:
            if group and sum(int(f.shape[0]) for f, _ in group) + int(item[0].shape[0]) > self.max_windows:
                flush()
            group.append(item)
        flush()
        return results

    def finalize(self) -> None:
        pass


# ---- af3_llm: embeddings + prompts -> text -------------------------------------------------


class _LLMBase:
    runtime: AF3Runtime
    default_max_new_tokens: int
    max_new_tokens_limit: int

    def _setup(self, args: dict[str, str]) -> ModelArgs:
        margs = ModelArgs.from_triton(args)
        self.runtime = load_stage(margs, "llm")
        self.default_max_new_tokens = margs.int_param(p.PARAM_MAX_NEW_TOKENS, DEFAULT_MAX_NEW_TOKENS)
        self.max_new_tokens_limit = margs.int_param(p.PARAM_MAX_NEW_TOKENS_LIMIT, DEFAULT_MAX_NEW_TOKENS_LIMIT)
        return margs

    def _options(self, request: Any, row: int) -> tuple[int, float, bool]:
        max_new = int(_row_value(_numpy(request, p.MAX_NEW_TOKENS), row, self.default_max_new_tokens))
        if not 0 < max_new <= self.max_new_tokens_limit:
            raise InputError(
                f"max_new_tokens must be in 1..{self.max_new_tokens_limit}, got {max_new}",
                code="bad_request",
            )
        temperature = float(_row_value(_numpy(request, p.TEMPERATURE), row, 0.0))
        if temperature < 0:
            raise InputError(f"temperature must be >= 0, got {temperature}", code="bad_request")
        think = bool(_row_value(_numpy(request, p.THINK), row, False))
        return max_new, temperature, think

    def _clips(self, embeds: Any | None, row: int) -> list[Any]:
        if embeds is None or embeds.numel() == 0:
            return []
        clip = embeds[row] if embeds.dim() == 3 else embeds
        if clip.dim() != 2 or clip.shape[-1] != self.runtime.model.config.text_config.hidden_size:
            raise InputError(
                f"audio_embeds must be [tokens, {self.runtime.model.config.text_config.hidden_size}] "
                f"per row, got {list(clip.shape)}",
                code="bad_request",
            )
        return [clip]


class AF3LLMModel(_LLMBase):
    """Prompts [batch, n] (+ optional embeddings [batch, tokens, hidden]) -> texts [batch, n].

    One encoder pass serves all n prompts of a row, as in the local engine; ChatML is built
    here with the same ``single_turn`` so both engines feed the LLM identical tokens.
    """

    def initialize(self, args: dict[str, str]) -> None:
        self._setup(args)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return _each(requests, self._one)

    def _one(self, request: Any) -> Any:
        prompts = _numpy(request, p.PROMPTS)
        if prompts is None:
            raise InputError("missing input 'prompts'", code="bad_request")
        rows = prompts.reshape(1, -1) if prompts.ndim == 1 else prompts
        embeds_in = _input(request, p.AUDIO_EMBEDS)
        embeds = _to_torch(embeds_in) if embeds_in is not None else None
        out: list[list[str]] = []
        for row, row_prompts in enumerate(rows):
            max_new, temperature, think = self._options(request, row)
            clips = self._clips(embeds, row)
            out.append(
                [
                    self.runtime.generate(
                        single_turn(text, n_audio=len(clips), think=think),
                        clips,
                        max_new_tokens=max_new,
                        temperature=temperature,
                        think=think,
                    ).text
                    for text in _texts(row_prompts)
                ]
            )
        adapter = np.full((len(rows), 1), self.runtime.think_loaded, dtype=np.bool_)
        return pb_utils.InferenceResponse(
            [_bytes_tensor(p.TEXT, out), pb_utils.Tensor(p.THINK_ADAPTER, adapter)]
        )

    def finalize(self) -> None:
        pass


# ---- af3_llm_stream: the same LLM, decoupled, one response per text piece ----------------


class AF3LLMStreamModel(_LLMBase):
    """One prompt or a whole conversation (+ audio clips) -> text pieces, then ``final=True``.

    Clips come as raw ``audio`` (all clips concatenated, split by ``audio_samples``; each is
    encoded on its own by ``af_whisper`` via BLS, so a client needs one call) or as ready
    ``audio_embeds`` (split by ``clip_tokens``). A conversation is JSON turns rendered with
    the same ``chatml`` the local engine uses; a plain prompt is ``single_turn``.
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
            max_new, temperature, think = self._options(request, 0)
            clips = self._clip_embeddings(request)
            chat = self._chatml(request, len(clips), think)
            for piece in self.runtime.stream(
                chat, clips, max_new_tokens=max_new, temperature=temperature, think=think
            ):
                sender.send(self._piece(piece, False))
            sender.send(self._piece("", True), flags=final)
        except Exception as exc:
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=_error(exc)), flags=final)

    @staticmethod
    def _chatml(request: Any, n_clips: int, think: bool) -> str:
        conversation = _numpy(request, p.CONVERSATION)
        prompt = _numpy(request, p.PROMPT)
        if (conversation is None) == (prompt is None):
            raise InputError("send exactly one of 'prompt' and 'conversation'", code="bad_request")
        if prompt is not None:
            if prompt.size != 1:
                raise InputError("'prompt' must hold exactly one text", code="bad_request")
            return single_turn(_texts(prompt)[0], n_audio=n_clips, think=think)
        assert conversation is not None
        turns = p.decode_turns(_texts(conversation)[0])
        p.check_conversation(turns, n_clips)
        return chatml(turns, think=think)

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
            return [self._clips(clip, 0)[0] for clip in torch.split(embeds, counts)]
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
        return [self._encode(flat[a:b]) for a, b in itertools.pairwise(bounds)]

    @staticmethod
    def _encode(clip: np.ndarray) -> Any:
        response = pb_utils.InferenceRequest(
            model_name=p.ENCODER,
            requested_output_names=[p.AUDIO_EMBEDS],
            inputs=[pb_utils.Tensor(p.AUDIO, clip.reshape(1, -1))],
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
