"""The triton engine returns what the local engine returns, token for token (greedy decoding).

Both run Earshot's own AF3 code on the same tiny checkpoint; only the transport differs. On CPU in
float32 batched greedy decoding equals unbatched, so this holds however the server batched.
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
from earshot.engines.base import Ask
from earshot.engines.local import LocalEngine
from earshot.engines.triton import TritonEngine
from earshot.errors import InputError
from earshot.triton.server import TritonServer
from tests.fixtures.speech import spoken

TASKS = ["transcribe", "caption", "events", "summarize", "think"]


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path, triton_server: TritonServer) -> Iterator[tuple[LocalEngine, TritonEngine]]:
    settings = Settings(model_path=str(tiny_model_dir), max_new_tokens=12, triton_url=triton_server.grpc_url)
    triton = TritonEngine.from_settings(settings)
    yield LocalEngine.from_settings(settings), triton
    triton.close()


def test_segment_analysis_is_identical(engines: tuple[LocalEngine, TritonEngine]) -> None:
    """One call per segment: its task prompts plus one transcription per speech chunk."""
    local, triton = engines
    settings = local.settings  # max_new_tokens=12 caps every task's budget: quick on CPU
    audio = spoken(45.0, [(12.0, 16.0), (31.0, 34.0)])  # eSpeak NG sentences: the VAD finds them
    questions = ["How many speakers are there?"]
    a = analyze_audio(local, audio, tasks=TASKS, questions=questions, settings=settings)
    b = analyze_audio(triton, audio, tasks=TASKS, questions=questions, settings=settings)
    assert {"transcribe", "caption", "events", "summarize", f"q:{questions[0]}"} <= set(a.raw)
    assert a.prompts > 5  # the speech chunks were transcribed one prompt each, in the same call
    assert b.raw == a.raw  # every generated text, token for token
    assert b.transcript == a.transcript and b.events == a.events and b.summary == a.summary
    assert b.reasoning == a.reasoning and all(r.adapter for r in b.reasoning)
    assert triton.has_think_adapter is True


def test_several_audios_per_call_match_with_stop_reasons_and_token_counts(
    engines: tuple[LocalEngine, TritonEngine],
) -> None:
    """Audios of different lengths share requests (zero-padded rows) and budgets differ per
    ask: every Generation, stop reason and token count included, equals the local one."""
    local, triton = engines
    audios = [tone_with_silences(s, [(0.5, 0.9)], seed=i) for i, s in enumerate((2.0, 9.5, 4.25, 30.0))]
    asks = [Ask("Transcribe the input speech.", audio=i, max_new_tokens=3 + 4 * i) for i in range(4)]
    asks += [
        Ask("Describe the audio in one sentence.", audio=1, max_new_tokens=1),
        Ask("Summarize the content of the audio in a few sentences.", audio=1),
        Ask("Summarize these notes: the budget grew.", max_new_tokens=5),
        Ask("What happens at the start?", audio=2, think=True, max_new_tokens=6),
    ]
    want = local.generate(asks, audios=audios)
    got = triton.generate(asks, audios=audios)
    assert got == want
    assert got[4].stop == "length" and got[4].new_tokens == 1  # a budget of one token
    assert all(g.new_tokens <= (a.max_new_tokens or 12) for g, a in zip(got, asks, strict=True))
    assert all(g.prompt_tokens > 25 * 2 for g in got[:4])  # audio tokens counted
    assert got[-1].adapter and not got[0].adapter
    with pytest.raises(InputError) as err:
        triton.generate([Ask("Hi.", audio=4)], audios=audios)
    assert err.value.code == "prompt_audio_mismatch"


def test_text_only_and_sampling_parameters_match(engines: tuple[LocalEngine, TritonEngine]) -> None:
    local, triton = engines
    asks = [Ask("Summarize these notes: the budget grew.", max_new_tokens=7), Ask("List the chapters.")]
    assert triton.generate(asks) == local.generate(asks)
    thinking = [Ask(a.prompt, think=True) for a in asks]
    assert triton.generate(thinking) == local.generate(thinking)
    assert triton.generate([]) == []


def test_conversation_matches_and_streams_the_same_text(engines: tuple[LocalEngine, TritonEngine]) -> None:
    local, triton = engines
    clip = tone_with_silences(4.0, seed=1)
    turns = [
        Turn("user", "What is in this clip?"),
        Turn("assistant", "A tone."),
        Turn("user", "And now this one?", audio=1),
    ]
    want = local.chat(turns, [clip], max_new_tokens=10)
    assert triton.chat(turns, [clip], max_new_tokens=10) == want
    assert "".join(triton.chat_stream(turns, [clip], max_new_tokens=10)) == want.text
    text_only = [*turns[:2], Turn("user", "Say it again.")]
    assert triton.chat(text_only, [], think=True, max_new_tokens=6) == local.chat(
        text_only, [], think=True, max_new_tokens=6
    )
    with pytest.raises(InputError) as err:
        triton.chat([Turn("user", "Compare.", audio=2)], [clip, clip])
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
