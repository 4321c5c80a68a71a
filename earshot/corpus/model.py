"""The golden model's starting point: a small random AF3 with a tokenizer that knows the corpus.

The architecture is transformers' AF3 (Whisper-style encoder, projector, Qwen2 LLM) at a small
size; the byte-level BPE tokenizer is trained on the spec's sentences and the prompts, so most
words are one token and the LLM has less to learn. The checkpoint layout is the one
``earshot model init-tiny`` writes, so everything that loads AF3 loads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from earshot.corpus.grammar import display, sample_sentence
from earshot.corpus.scenes import ASR_ANSWER, NUMBER_PROMPT, SYSTEM_PROMPT, Event, events_answer
from earshot.corpus.spec import CorpusSpec

# The real AF3 template's behaviour: a default system turn when none is given, `<sound>` before
# the text of a turn that carries audio (FIDELITY's init-tiny writes the same).
DEFAULT_SYSTEM = SYSTEM_PROMPT
# Qwen2's and AF3's special tokens, as the tiny checkpoint has them.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{{ '<sound>' }}{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelSize:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    encoder_hidden: int | None = None  # defaults to hidden
    encoder_layers: int | None = None  # defaults to layers
    vocab_size: int = 1500


def tokenizer_corpus(spec: CorpusSpec, *, seed: int = 0, sentences: int = 4000) -> list[str]:
    """Text the BPE learns its merges from: grammar sentences (both sides of the held-out split:
    the tokenizer must be able to write held-out combinations) and every fixed answer shape."""
    from earshot import prompts

    rng = np.random.default_rng(seed)
    lines = [display(sample_sentence(rng, spec, heldout=bool(i % 5 == 0)).text) for i in range(sentences)]
    lines += [ASR_ANSWER.format(text=line) for line in lines[:200]]
    for label in spec.event_labels():
        for t in np.arange(0, 30, 0.7):
            lines.append(events_answer([Event(round(float(t), 1), round(float(t) + 1.3, 1), label)]))
    lines += [prompts.CAPTION, prompts.EVENTS, prompts.THINK_QUESTION, NUMBER_PROMPT, SYSTEM_PROMPT]
    lines += [w.capitalize() + "." for w in spec.words["number"]]
    lines += ["A man speaks.", "A woman speaks, with a siren, then knocking.", "No sound events."]
    lines += ["I hear one voice speaking in sentences, with pauses between them.", "Background noise."]
    return lines


def _train_tokenizer(lines: list[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
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
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    return vocab, merges  # type: ignore[return-value]


def build_golden_init(out_dir: str | Path, spec: CorpusSpec, size: ModelSize, *, seed: int = 0) -> Path:
    """Write the untrained golden AF3 (HF layout + processor + tokenizer) to ``out_dir``."""
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

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab, merges = _train_tokenizer(tokenizer_corpus(spec, seed=seed), size.vocab_size)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    eos_id = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))  # type: ignore[arg-type]
    pad_id = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))  # type: ignore[arg-type]
    sound_id = int(tokenizer.convert_tokens_to_ids("<sound>"))  # type: ignore[arg-type]
    enc_hidden = size.encoder_hidden or size.hidden
    audio_config = AudioFlamingo3EncoderConfig(
        num_mel_bins=128,
        num_hidden_layers=size.encoder_layers or size.layers,
        num_attention_heads=size.heads,
        intermediate_size=4 * enc_hidden,
        hidden_size=enc_hidden,
        max_source_positions=1500,  # fixes the 30 s window / 750 token geometry
    )
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=4 * size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=max(1, size.heads // 2),
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    config = AudioFlamingo3Config(audio_config=audio_config, text_config=text_config, audio_token_id=sound_id)
    model = AudioFlamingo3ForConditionalGeneration(config)
    # The latest converter's generation config: greedy, a budget that never cuts a 30 s answer.
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
    return out


def parameter_count(model_dir: str | Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                total += int(np.prod(fh.get_slice(k).get_shape()))
    return total
