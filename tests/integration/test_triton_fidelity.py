"""The triton engine returns what the local engine returns, token for token (greedy decoding).

Both run Earshot's own AF3 code on the same tiny checkpoint; only the transport differs.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.af3.chat import Turn
from earshot.analysis import analyze_audio
from earshot.audio.synth import tone_with_silences
from earshot.config import Settings
from earshot.engines.local import LocalEngine
from earshot.engines.triton import TritonEngine
from earshot.errors import InputError
from earshot.triton.server import TritonServer

TASKS = ["transcribe", "caption", "events", "summarize", "think"]


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path, triton_server: TritonServer) -> Iterator[tuple[LocalEngine, TritonEngine]]:
    settings = Settings(model_path=str(tiny_model_dir), max_new_tokens=12, triton_url=triton_server.grpc_url)
    triton = TritonEngine.from_settings(settings)
    yield LocalEngine.from_settings(settings), triton
    triton.close()


def test_segment_analysis_is_identical(engines: tuple[LocalEngine, TritonEngine]) -> None:
    local, triton = engines
    audio = tone_with_silences(20.0, [(6.0, 8.5), (14.0, 15.0)], seed=3)
    questions = ["How many speakers are there?"]
    a = analyze_audio(local, audio, tasks=TASKS, questions=questions)
    b = analyze_audio(triton, audio, tasks=TASKS, questions=questions)
    assert {"transcribe", "caption", "events", "summarize", f"q:{questions[0]}"} <= set(a.raw)
    assert b.raw == a.raw  # every generated text, token for token
    assert b.transcript == a.transcript and b.events == a.events and b.summary == a.summary
    assert b.reasoning == a.reasoning and all(r.adapter for r in b.reasoning)
    assert triton.has_think_adapter is True


def test_text_only_and_sampling_parameters_match(engines: tuple[LocalEngine, TritonEngine]) -> None:
    local, triton = engines
    prompts = ["Summarize these notes: the budget grew.", "List the chapters."]
    assert triton.generate(prompts, max_new_tokens=7) == local.generate(prompts, max_new_tokens=7)
    assert triton.generate(prompts, think=True) == local.generate(prompts, think=True)
    assert triton.generate([]) == []


def test_multi_audio_conversation_matches(engines: tuple[LocalEngine, TritonEngine]) -> None:
    local, triton = engines
    a, b = tone_with_silences(4.0, seed=1), tone_with_silences(2.5, seed=2)
    turns = [
        Turn("user", "Compare these two clips.", audio=2),
        Turn("assistant", "The first is longer."),
        Turn("user", "And now this one?", audio=1),
    ]
    clips = [a, b, a[:16000]]
    want = local.chat(turns, clips, max_new_tokens=10)
    assert triton.chat(turns, clips, max_new_tokens=10) == want
    assert "".join(triton.chat_stream(turns, clips, max_new_tokens=10)) == want
    with pytest.raises(InputError) as err:
        triton.chat(turns, clips[:2])
    assert err.value.code == "prompt_audio_mismatch"


def test_speech_matches_including_non_ascii(engines: tuple[LocalEngine, TritonEngine]) -> None:
    """The stub's C locale must not break non-ASCII summaries (model output often has some)."""
    local, triton = engines
    text = "Résumé: the naïve café meeting — ends at 10 s. \ufffd"
    mine, theirs = triton.speak(text), local.speak(text)
    assert (mine.sample_rate, mine.voice) == (theirs.sample_rate, theirs.voice)
    x = sf.read(io.BytesIO(mine.wav), dtype="int16")[0]
    y = sf.read(io.BytesIO(theirs.wav), dtype="int16")[0]
    assert np.array_equal(x, y) and mine.duration_s == pytest.approx(theirs.duration_s)
