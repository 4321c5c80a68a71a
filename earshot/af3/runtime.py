"""AF3 split into its two stages: audio -> embeddings (encoder) and embeddings + prompt -> text.

The split is the contract between the local engine and the Triton models (af_whisper,
af3_llm): scattering encoder output into the ``<sound>`` positions and calling ``generate``
with ``inputs_embeds`` is token-identical to the fused call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from earshot.af3.chat import SOUND_TOKEN
from earshot.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
WINDOW_S = 30
MAX_WINDOWS = 20
TOKENS_PER_WINDOW = 750


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int


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
        # generate() and adapter switching are not re-entrant on one model
        self.lock = threading.RLock()
        self.think_loaded = False
        # why a think/ adapter present in the checkpoint is not used (None when it is, or absent)
        self.think_error: str | None = None

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
        if (path / "think" / "adapter_config.json").exists():
            from earshot.af3.think import attach_think_adapter

            attach_think_adapter(runtime, path / "think")
        return runtime

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

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- stage 1: audio -> embeddings -------------------------------------------------------

    def features(self, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features of <= 600 s of 16 kHz mono audio, in 30 s windows (3000 frames)."""
        return audio_features(self.processor.feature_extractor, audio)

    def encode_features(self, input_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            out = self.model.get_audio_features(
                input_features.to(self.device, self.dtype), mask.to(self.device)
            )
        return out.pooler_output

    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """Projected audio embeddings, padding removed: [n_tokens, llm_hidden]."""
        feats, mask = self.features(audio)
        return self.encode_features(feats, mask)

    # ---- stage 2: embeddings + prompt -> text -----------------------------------------------

    def prompt_ids(self, chatml: str, clips: Sequence[int]) -> torch.Tensor:
        """Token ids with the i-th ``<sound>`` expanded to ``clips[i]`` audio tokens."""
        import torch

        ids = self.tokenizer(chatml, add_special_tokens=False)["input_ids"]
        return torch.tensor([expand_sound_tokens(ids, self.sound_id, clips)], dtype=torch.long)

    def prompt_embeds(
        self, chatml: str, audio_embeds: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs_embeds with every clip's embeddings placed at its ``<sound>`` positions."""
        import torch

        ids = self.prompt_ids(chatml, [int(e.shape[0]) for e in audio_embeds]).to(self.device)
        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(ids)
            if audio_embeds:
                audio = torch.cat([e.to(self.device, embeds.dtype) for e in audio_embeds], dim=0)
                mask = (ids == self.sound_id).unsqueeze(-1).expand_as(embeds)
                embeds = embeds.masked_scatter(mask, audio)
        return ids, embeds

    def _gen_kwargs(self, max_new_tokens: int, temperature: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def generate(
        self,
        chatml: str,
        audio_embeds: Sequence[torch.Tensor] = (),
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        think: bool = False,
    ) -> Generation:
        import torch

        with self.lock, self.think_mode(think):
            ids, embeds = self.prompt_embeds(chatml, audio_embeds)
            attn = torch.ones(ids.shape, dtype=torch.long, device=self.device)
            with torch.inference_mode():
                out = self.model.generate(
                    inputs_embeds=embeds,
                    attention_mask=attn,
                    **self._gen_kwargs(max_new_tokens, temperature),
                )
        new = out[0]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Generation(text=text, prompt_tokens=int(ids.shape[1]), new_tokens=int(new.shape[0]))

    def stream(
        self,
        chatml: str,
        audio_embeds: Sequence[torch.Tensor] = (),
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        think: bool = False,
    ) -> Iterator[str]:
        """Yield decoded text pieces as they are generated."""
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_special_tokens=True)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with self.lock, self.think_mode(think):
                    ids, embeds = self.prompt_embeds(chatml, audio_embeds)
                    attn = torch.ones(ids.shape, dtype=torch.long, device=self.device)
                    with torch.inference_mode():
                        self.model.generate(
                            inputs_embeds=embeds,
                            attention_mask=attn,
                            streamer=streamer,
                            **self._gen_kwargs(max_new_tokens, temperature),
                        )
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

    # ---- thinking ----------------------------------------------------------------------------

    def think_mode(self, enabled: bool) -> Any:
        from earshot.af3.think import think_context

        return think_context(self, enabled)
