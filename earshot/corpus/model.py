"""The golden model's starting point: a small random AF3 with a tokenizer that knows the corpus.

The architecture is transformers' AF3 (Whisper-style encoder, projector, Qwen2 LLM) at a small
size; the byte-level BPE tokenizer is trained on the spec's sentences and the prompts, so most
words are one token and the LLM has less to learn. The checkpoint layout is the one
``earshot model init-tiny`` writes, so everything that loads AF3 loads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from earshot.af3.tiny import ModelSize, build_checkpoint
from earshot.corpus.grammar import display, sample_sentence
from earshot.corpus.scenes import ASR_ANSWER, NUMBER_PROMPT, SYSTEM_PROMPT, Event, events_answer
from earshot.corpus.spec import CorpusSpec


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


def build_golden_init(out_dir: str | Path, spec: CorpusSpec, size: ModelSize, *, seed: int = 0) -> Path:
    """Write the untrained golden AF3 (HF layout + processor + tokenizer) to ``out_dir``: the
    tiny checkpoint's builder at the golden size, its tokenizer learned from the corpus."""
    return build_checkpoint(
        out_dir, size=size, tokenizer_lines=tokenizer_corpus(spec, seed=seed), seed=seed, with_think=False
    )


def parameter_count(model_dir: str | Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                total += int(np.prod(fh.get_slice(k).get_shape()))
    return total
