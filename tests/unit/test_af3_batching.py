"""The batching policy (af3_llm, local engine): bounded runs of similar lengths, every prompt exactly once."""

from __future__ import annotations

from earshot.af3.batching import batches


def test_runs_are_bounded_sorted_by_length_and_lose_nothing() -> None:
    # 30 chunk prompts (~800 tokens) and 3 segment prompts (~15,000 tokens), interleaved
    lengths = [800 + i for i in range(30)] + [15040, 15040, 15040]
    items = lengths[:10] + lengths[30:] + lengths[10:30]
    runs = batches(items, 16, 64 * 1024, lambda n: n)
    assert sorted(n for run in runs for n in run) == sorted(items)
    assert all(len(run) <= 16 and len(run) * max(run) <= 64 * 1024 for run in runs)
    # chunks are never padded to a segment: each run holds one kind
    assert all(max(run) < 1000 or min(run) > 10000 for run in runs)
    assert [len(r) for r in runs] == [16, 14, 3]


def test_an_item_over_the_token_bound_runs_alone() -> None:
    runs = batches([5, 100, 6], 8, 50, lambda n: n)
    assert runs == [[5, 6], [100]]
