"""How many prompts go through one batched generate, and which together.

Triton's af3_llm applies it to every dynamic batch; the local engine can apply it to one
call's rows, and the GPU benchmark to in-process runs. Without it, a call's 30 s speech-chunk
prompts (~800 tokens) would be left-padded to its 600 s segment prompts (~15,000 tokens) and
decode as long as the longest answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Sequences per batched generate: bounds KV-cache memory when the batcher hands over a lot.
DEFAULT_MAX_BATCH_ROWS = 64
# Padded prompt tokens per batched generate (rows x longest prompt): bounds prefill and KV
# memory; 262144 is about 15 GB of bf16 KV cache for the 7B LLM.
DEFAULT_MAX_BATCH_TOKENS = 262144
# On CPU the padded batch's attention mask is materialised (rows x L x L floats), and a decode
# step at long context costs in proportion to its rows (no fixed per-step cost to share), while
# rows that end early keep computing until the batch's longest answer ends. So only short
# prompts share a batch there: ~10 speech-chunk prompts (~800 tokens), never two 600 s segment
# prompts (~15,000). With 65536 (the three segment prompts in one batch) the tiny model's job
# mix ran 0.70x of unbatched, with 8192 1.25x (bench/results/throughput_cpu_quiet*.json).
CPU_MAX_BATCH_TOKENS = 8192


def row_length(row: Any) -> int:
    """Prompt tokens of a runtime ``Row``, estimated before tokenizing (audio tokens dominate)."""
    return sum(int(e.shape[0]) for e in row.audio_embeds) + len(row.prompt) // 3 + 1


# Longest prompt of a run over its shortest: more would spend most of the run on padding.
DEFAULT_MAX_LENGTH_RATIO = 1.5


def batches(
    items: Sequence[T],
    max_rows: int,
    max_tokens: int,
    length: Callable[[T], int],
    *,
    max_ratio: float = DEFAULT_MAX_LENGTH_RATIO,
) -> list[list[T]]:
    """``items`` sorted by length and cut into runs of at most ``max_rows`` rows, at most
    ``max_tokens`` prompt tokens once padded to the run's longest (an over-long item runs
    alone), and a longest prompt at most ``max_ratio`` times the run's shortest.

    Sorting and the ratio keep similar lengths together: a 30 s chunk's prompt is ~800
    tokens, a 600 s segment's ~15,000; batched with each other, the chunks would be padded to
    the segment whatever the token bound.
    """
    out: list[list[T]] = []
    run: list[T] = []
    longest = shortest = 0
    for item in sorted(items, key=length):
        n = length(item)
        if run and (
            len(run) + 1 > max_rows
            or (len(run) + 1) * max(longest, n) > max_tokens
            or n > max_ratio * max(shortest, 1)
        ):
            out.append(run)
            run, longest = [], 0
        if not run:
            shortest = n
        run.append(item)
        longest = max(longest, n)
    if run:
        out.append(run)
    return out
