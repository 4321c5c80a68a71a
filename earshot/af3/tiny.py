"""Build a tiny, randomly initialised AF3 checkpoint with the real transformers classes.

Used by tests, the demo and benchmarks: no weights can be downloaded, so everything that
loads a real checkpoint is exercised on this one. It has the real repository's file layout
(config, greedy generation config with ``max_new_tokens=2048``, preprocessor and tokenizer
files, ``chat_template.jinja``, and ``think/`` with ``adapter_config.json``,
``adapter_model.safetensors`` and ``non_lora_trainables.bin``). Its output is noise by
construction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from earshot.af3.chat import SOUND_TOKEN

# Written to the checkpoint as its own template, like the real one: a default system turn
# when none is given, and each audio's <sound> before the turn's text. Earshot renders
# prompts with whatever template a checkpoint carries, so this text is used nowhere else.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'audio' -%}{{- '<sound>' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", SOUND_TOKEN, "<think>", "</think>"]

# A small English corpus so the byte-level BPE learns real merges; the words barely matter.
_CORPUS = """
Transcribe the input speech. Describe the audio in one sentence. List every sound event with
its start and end time in seconds. Summarize the recording. Please think and reason about the
input audio before you respond. The speaker talks about the weather, the meeting agenda, the
budget for next quarter and the release plan. A dog barks, a siren wails in the distance, music
starts and stops, people laugh and applaud. Speaker one asks a question; speaker two answers.
The alarm rings at ten seconds and ends at fifteen seconds. Chapter one introduces the topic.
"""


@dataclass(frozen=True)
class ModelSize:
    """The shape of a small AF3: the tiny random one (the defaults) or the golden one."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    encoder_hidden: int | None = None  # defaults to hidden
    encoder_layers: int | None = None  # defaults to layers
    ffn_mult: int = 2  # feed-forward width = ffn_mult x hidden, in both towers
    vocab_size: int = 4000


def train_tokenizer(lines: list[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE (as Qwen2's) learned from ``lines``: its vocabulary and merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    merges: list[tuple[str, str]] = []
    for m in state["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merges.append((a, b))
    return vocab, merges


def build_tiny_checkpoint(
    out_dir: str | Path, *, seed: int = 0, vocab_size: int = 4000, with_think: bool = True
) -> Path:
    """Write a tiny AF3 (64-dim encoder and Qwen2, 2 layers each) to ``out_dir``."""
    lines = [line for line in _CORPUS.split("\n") if line] * 20
    return build_checkpoint(
        out_dir, size=ModelSize(vocab_size=vocab_size), tokenizer_lines=lines, seed=seed, with_think=with_think
    )


def build_checkpoint(
    out_dir: str | Path,
    *,
    size: ModelSize,
    tokenizer_lines: list[str],
    seed: int = 0,
    with_think: bool = True,
) -> Path:
    """Write a small random AF3 of ``size`` whose tokenizer learned ``tokenizer_lines``."""
    import torch
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3EncoderConfig,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
        GenerationConfig,
        Qwen2Config,
        Qwen2Tokenizer,
        WhisperFeatureExtractor,
    )
    from transformers.models.whisper.modeling_whisper import sinusoids

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    vocab, merges = train_tokenizer(tokenizer_lines, size.vocab_size)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    eos_id = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))  # type: ignore[arg-type]
    pad_id = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))  # type: ignore[arg-type]
    sound_id = int(tokenizer.convert_tokens_to_ids(SOUND_TOKEN))  # type: ignore[arg-type]

    enc_hidden = size.encoder_hidden or size.hidden
    # max_source_positions must stay 1500: it fixes the 30 s window / 750 token geometry.
    audio_config = AudioFlamingo3EncoderConfig(
        num_mel_bins=128,
        num_hidden_layers=size.encoder_layers or size.layers,
        num_attention_heads=size.heads,
        intermediate_size=size.ffn_mult * enc_hidden,
        hidden_size=enc_hidden,
        max_source_positions=1500,
    )
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.ffn_mult * size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=max(1, size.heads // 2),
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    config = AudioFlamingo3Config(
        audio_config=audio_config,
        text_config=text_config,
        audio_token_id=sound_id,
    )
    model = AudioFlamingo3ForConditionalGeneration(config)
    # AF-Whisper's positions are Whisper's fixed sinusoids (frozen, shipped in the checkpoint);
    # transformers' init leaves them N(0, 0.02) noise, an encoder that cannot tell one frame's
    # place from another's
    positions = model.model.audio_tower.embed_positions.weight
    with torch.no_grad():
        positions.copy_(sinusoids(positions.shape[0], positions.shape[1]))
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=pad_id, max_new_tokens=2048, do_sample=False
    )
    model.save_pretrained(out)

    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, chunk_length=30, n_samples=480000, nb_max_frames=3000
    )
    processor = AudioFlamingo3Processor(
        feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(out)
    feature_extractor.save_pretrained(out)  # preprocessor_config.json, as in the real repository

    if with_think:
        from earshot.af3.think import write_random_think_adapter

        write_random_think_adapter(model, out / "think", seed=seed)
    return out
