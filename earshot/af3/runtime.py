"""AF3 split into its two stages: audio -> embeddings (encoder) and embeddings + prompt -> text.

The split is the contract between the local engine and the Triton models (af_whisper,
af3_llm): scattering encoder output into the ``<sound>`` positions and calling ``generate``
with ``inputs_embeds`` is token-identical to the fused call.

Generation is batched: any number of prompts, each with its own audio and token limit, go
through one ``generate`` with left padding, and each row stops on its own (end of turn or
its own limit). Rows with and without the think adapter run as separate batches; a mode
gate lets any number of same-mode batches run at once and only waits at a mode switch, so
there is no process-wide generation lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from earshot.af3 import think as think_adapter
from earshot.af3.batching import (
    CPU_MAX_BATCH_TOKENS,
    DEFAULT_MAX_BATCH_ROWS,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_LENGTH_RATIO,
    batches,
)
from earshot.af3.chat import SOUND_TOKEN, Turn, render
from earshot.af3.generation import Generation
from earshot.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
WINDOW_S = 30
MAX_WINDOWS = 20
TOKENS_PER_WINDOW = 750


__all__ = ["AF3Runtime", "Generation", "ModeGate", "Row"]


@dataclass(frozen=True)
class Row:
    """One prompt of a batch: rendered template text, one embedding tensor per ``<sound>``."""

    prompt: str
    audio_embeds: Sequence[torch.Tensor] = ()
    max_new_tokens: int = 256
    think: bool = False


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(requested: str, device: str) -> torch.dtype:
    import torch

    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        requested
    ]


def audio_features(
    feature_extractor: Any, audio: np.ndarray, *, max_windows: int = MAX_WINDOWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel features of 16 kHz mono audio in 30 s windows (3000 frames each) and their mask.

    Module-level so training windows audio exactly as inference does without a loaded runtime.
    """
    if audio.ndim != 1:
        raise InputError("audio must be mono (one dimension)", code="bad_audio_shape")
    n = int(audio.shape[0])
    if n == 0:
        raise InputError("audio is empty (0 samples)", code="empty_audio")
    window = SAMPLE_RATE * WINDOW_S
    n_win = (n + window - 1) // window
    if n_win > max_windows:
        raise InputError(
            f"audio is {n / SAMPLE_RATE:.1f} s; AF3 takes at most {max_windows * WINDOW_S} s "
            "per call (split it first)",
            code="audio_too_long",
        )
    chunks = [audio[i * window : (i + 1) * window].astype(np.float32) for i in range(n_win)]
    fe = feature_extractor(
        chunks, sampling_rate=SAMPLE_RATE, return_attention_mask=True, return_tensors="pt"
    )
    return fe["input_features"], fe["attention_mask"]


def window_token_counts(mask: torch.Tensor) -> list[int]:
    """Audio tokens each window yields: the encoder's conv (stride 2) then avg-pool (stride 2).

    Same arithmetic as the encoder's ``_get_feat_extract_output_lengths``, so token counts are
    known before the encoder runs (a full 3000-frame window gives 750).
    """
    frames = mask.sum(-1).long()
    after_conv = (frames - 1) // 2 + 1
    return [int(n) for n in (after_conv - 2) // 2 + 1]


def expand_sound_tokens(ids: Sequence[int], sound_id: int, clips: Sequence[int]) -> list[int]:
    """Token ids with the i-th ``sound_id`` placeholder repeated ``clips[i]`` times."""
    n_sound = sum(1 for t in ids if t == sound_id)
    if n_sound != len(clips):
        raise InputError(
            f"prompt has {n_sound} {SOUND_TOKEN} placeholders for {len(clips)} audio clips",
            code="prompt_audio_mismatch",
        )
    expanded: list[int] = []
    clip = 0
    for t in ids:
        if t == sound_id:
            expanded.extend([sound_id] * int(clips[clip]))
            clip += 1
        else:
            expanded.append(int(t))
    return expanded


class ModeGate:
    """Many holders of one mode at a time; a holder of the other mode waits until they leave.

    The first holder of a mode switches the model into it. A waiter of the other mode stops
    new arrivals of the current mode from joining, so neither mode starves.
    """

    def __init__(self, switch: Callable[[bool], None]) -> None:
        self._switch = switch
        self._cond = threading.Condition()
        self._mode = False
        self._holders = 0
        self._waiting = {False: 0, True: 0}

    @contextmanager
    def hold(self, mode: bool) -> Iterator[None]:
        with self._cond:
            self._waiting[mode] += 1
            while not (
                self._holders == 0 or (self._mode == mode and self._waiting[not mode] == 0)
            ):
                self._cond.wait()
            self._waiting[mode] -= 1
            if self._mode != mode:
                self._switch(mode)
                self._mode = mode
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                self._cond.notify_all()


class _RowLimits:
    """Stopping criterion: each row ends at its own ``max_new_tokens``."""

    def __init__(self, limits: Sequence[int]) -> None:
        self.limits = limits
        self._offset: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        if self._offset is None:  # first call: one token has been generated
            self._offset = int(input_ids.shape[1]) - 1
        done = int(input_ids.shape[1]) - self._offset
        limits = torch.tensor(self.limits, device=input_ids.device)
        return done >= limits


class AF3Runtime:
    """A loaded AF3 checkpoint (model + processor) and the two inference stages."""

    def __init__(self, model: Any, processor: Any, *, model_dir: Path, device: str) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_dir = model_dir
        self.device = device
        self.sound_id: int = int(model.config.audio_token_id)
        self.eos_ids = self._eos_ids()
        self.pad_id = self._pad_id()
        self.think: think_adapter.ThinkWeights | None = None
        # why a think/ adapter present in the checkpoint is not used (None when it is, or absent)
        self.think_error: str | None = None
        self.gate = ModeGate(self._switch_think)
        # extra generate() arguments for every call (e.g. a static cache for compiled decoding)
        self.decode_kwargs: dict[str, Any] = {}
        # batching: rows, padded prompt tokens and longest/shortest prompt per generate
        self.max_batch_rows = DEFAULT_MAX_BATCH_ROWS
        self.max_batch_tokens = DEFAULT_MAX_BATCH_TOKENS if device.startswith("cuda") else CPU_MAX_BATCH_TOKENS
        self.max_batch_ratio = DEFAULT_MAX_LENGTH_RATIO

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str = "auto", dtype: str = "auto") -> AF3Runtime:
        from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor

        path = Path(model_dir)
        if not (path / "config.json").exists():
            raise ConfigError(
                f"no AF3 checkpoint at {path}: expected config.json (set EARSHOT_MODEL_PATH "
                "or build one with `earshot model init-tiny DIR`)",
                code="model_not_found",
            )
        dev = pick_device(device)
        torch_dtype = pick_dtype(dtype, dev)
        model = AudioFlamingo3ForConditionalGeneration.from_pretrained(path, dtype=torch_dtype)
        model.to(dev)  # type: ignore[arg-type]
        model.eval()
        processor = AutoProcessor.from_pretrained(path)
        runtime = cls(model, processor, model_dir=path, device=dev)
        adapter_dir = path / think_adapter.ADAPTER_DIR
        if (adapter_dir / "adapter_config.json").exists():
            runtime.attach_think(adapter_dir)
        return runtime

    def attach_think(self, adapter_dir: Path) -> bool:
        """Load the whole think adapter, switched off. A broken one does not stop the engine:
        the base model serves every request and ``think_error`` says why."""
        try:
            self.think = think_adapter.attach_think_adapter(self.model, adapter_dir)
            self.think_error = None
        except think_adapter.ThinkAdapterError as exc:
            self.think, self.think_error = None, str(exc)
            think_adapter.log.warning("think adapter not used: %s", exc)
        return self.think is not None

    @property
    def think_loaded(self) -> bool:
        return self.think is not None

    def _switch_think(self, on: bool) -> None:
        if self.think is not None:
            think_adapter.set_think(self.model, self.think, on)

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid >= 0 and tid != self.tokenizer.unk_token_id:
                ids.append(tid)
        gen_eos = self.model.generation_config.eos_token_id
        for tid in [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []):
            if tid not in ids:
                ids.append(int(tid))
        return ids

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.eos_ids[0]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- prompts ------------------------------------------------------------------------------

    def prompt(self, turns: Sequence[Turn], *, think: bool = False) -> str:
        """Turns rendered with this checkpoint's own chat template."""
        return render(self.tokenizer, turns, think=think)

    # ---- stage 1: audio -> embeddings -------------------------------------------------------

    def features(self, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features of <= 600 s of 16 kHz mono audio, in 30 s windows (3000 frames)."""
        return audio_features(self.processor.feature_extractor, audio)

    def audio_mode(self, think: bool) -> bool:
        """Whether audio for a ``think`` prompt must be encoded with the think weights on."""
        return bool(think and self.think is not None and self.think.changes_audio)

    def encode_features(
        self, input_features: torch.Tensor, mask: torch.Tensor, *, think: bool = False
    ) -> torch.Tensor:
        import torch

        with self.gate.hold(self.audio_mode(think)), torch.inference_mode():
            out = self.model.get_audio_features(
                input_features.to(self.device, self.dtype), mask.to(self.device)
            )
        return out.pooler_output

    def encode(self, audio: np.ndarray, *, think: bool = False) -> torch.Tensor:
        """Projected audio embeddings, padding removed: [n_tokens, llm_hidden]."""
        feats, mask = self.features(audio)
        return self.encode_features(feats, mask, think=think)

    def encode_many(
        self, audios: Sequence[np.ndarray], *, think: bool = False, max_windows: int = 40
    ) -> list[torch.Tensor]:
        """:meth:`encode` for several clips, their 30 s windows batched through the encoder
        (at most ``max_windows`` per forward, to bound activation memory)."""
        import torch

        prepared = [self.features(a) for a in audios]
        out: list[torch.Tensor] = []
        group: list[tuple[torch.Tensor, torch.Tensor]] = []

        def flush() -> None:
            if group:
                masks = torch.cat([m for _, m in group])
                embeds = self.encode_features(torch.cat([f for f, _ in group]), masks, think=think)
                out.extend(torch.split(embeds, [sum(window_token_counts(m)) for _, m in group]))
                group.clear()

        for item in prepared:
            if group and sum(int(f.shape[0]) for f, _ in group) + int(item[0].shape[0]) > max_windows:
                flush()
            group.append(item)
        flush()
        return out

    # ---- stage 2: embeddings + prompt -> text -----------------------------------------------

    def prompt_ids(self, prompt: str, clips: Sequence[int]) -> list[int]:
        """Token ids with the i-th ``<sound>`` expanded to ``clips[i]`` audio tokens."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return expand_sound_tokens(ids, self.sound_id, clips)

    def row_ids(self, row: Row) -> list[int]:
        return self.prompt_ids(row.prompt, [int(e.shape[0]) for e in row.audio_embeds])

    def _batch_inputs(
        self, rows: Sequence[Row], ids: Sequence[list[int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Left-padded inputs_embeds with each row's audio at its ``<sound>`` positions."""
        import torch

        ids = [self.row_ids(r) for r in rows] if ids is None else ids
        width = max(len(i) for i in ids)
        padded = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row_ids in enumerate(ids):
            padded[k, width - len(row_ids) :] = torch.tensor(row_ids, dtype=torch.long)
            attn[k, width - len(row_ids) :] = 1
        padded, attn = padded.to(self.device), attn.to(self.device)
        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(padded)
            clips = [e for r in rows for e in r.audio_embeds]
            if clips:
                audio = torch.cat([e.to(self.device, embeds.dtype) for e in clips], dim=0)
                where = ((padded == self.sound_id) & (attn == 1)).unsqueeze(-1).expand_as(embeds)
                embeds = embeds.masked_scatter(where, audio)
        return embeds, attn, [len(i) for i in ids]

    def _gen_kwargs(self, max_new_tokens: int, temperature: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.pad_id,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        kwargs.update(self.decode_kwargs)
        return kwargs

    def _run(
        self,
        rows: Sequence[Row],
        temperature: float,
        *,
        adapter: bool,
        streamer: Any = None,
        ids: Sequence[list[int]] | None = None,
    ) -> list[Generation]:
        """One generate over ``rows`` (all of one think mode); the caller holds the gate."""
        import torch
        from transformers import StoppingCriteriaList

        for r in rows:
            if r.max_new_tokens < 1:
                raise InputError(f"max_new_tokens must be >= 1, got {r.max_new_tokens}", code="bad_request")
        embeds, attn, prompt_lens = self._batch_inputs(rows, ids)
        limits = [r.max_new_tokens for r in rows]
        with torch.inference_mode():
            out = self.model.generate(
                inputs_embeds=embeds,
                attention_mask=attn,
                stopping_criteria=StoppingCriteriaList([_RowLimits(limits)]),
                streamer=streamer,
                **self._gen_kwargs(max(limits), temperature),
            )
        results = []
        eos = set(self.eos_ids)
        for k, limit in enumerate(limits):
            tokens = [int(t) for t in out[k][:limit]]
            end = next((i for i, t in enumerate(tokens) if t in eos), None)
            kept = tokens if end is None else tokens[:end]
            results.append(
                Generation(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    stop="length" if end is None else "eos",
                    prompt_tokens=prompt_lens[k],
                    new_tokens=len(tokens) if end is None else end + 1,
                    adapter=adapter,
                )
            )
        return results

    def generate_batch(self, rows: Sequence[Row], *, temperature: float = 0.0) -> list[Generation]:
        """Answer every row, in row order: one ``generate`` per run of rows that share a think
        mode and a similar prompt length (``earshot.af3.batching.batches``: a 600 s segment's
        prompt and its 30 s chunk prompts are never padded into one batch)."""
        results: list[Generation | None] = [None] * len(rows)
        for mode in (False, True):
            idx = [i for i, r in enumerate(rows) if bool(r.think and self.think_loaded) == mode]
            if not idx:
                continue
            ids = {i: self.row_ids(rows[i]) for i in idx}
            lengths = {i: len(t) for i, t in ids.items()}
            with self.gate.hold(mode):
                for group in batches(
                    idx, self.max_batch_rows, self.max_batch_tokens, lengths.__getitem__,
                    max_ratio=self.max_batch_ratio,
                ):
                    answers = self._run(
                        [rows[i] for i in group], temperature, adapter=mode, ids=[ids[i] for i in group]
                    )
                    for i, answer in zip(group, answers, strict=True):
                        results[i] = answer
        return [r for r in results if r is not None]

    def generate(
        self,
        prompt: str,
        audio_embeds: Sequence[torch.Tensor] = (),
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        think: bool = False,
    ) -> Generation:
        return self.generate_batch(
            [Row(prompt, audio_embeds, max_new_tokens, think)], temperature=temperature
        )[0]

    def stream(self, row: Row, *, temperature: float = 0.0) -> Generator[str, None, Generation]:
        """Yield decoded text pieces as they are generated (the same path as :meth:`generate`);
        the generator returns the whole :class:`Generation` (stop reason included)."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=False, skip_special_tokens=True)
        errors: list[BaseException] = []
        done: list[Generation] = []
        mode = bool(row.think and self.think_loaded)

        def work() -> None:
            try:
                with self.gate.hold(mode):
                    done.extend(self._run([row], temperature, adapter=mode, streamer=streamer))
            except BaseException as exc:  # surfaced to the consumer below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()
        if errors:
            raise errors[0]
        return done[0]
