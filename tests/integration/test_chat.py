"""Conversations end to end on PostgreSQL and the tiny AF3: API, SSE, CLI, tensor positions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from earshot.af3.chat import SOUND_TOKEN
from earshot.af3.runtime import AF3Runtime
from earshot.audio.synth import encode_file, tone_with_silences
from earshot.auth.service import create_key
from earshot.chat import service
from earshot.chat.models import Conversation, ConversationClip, ConversationTurn
from earshot.config import Settings, get_settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.engines.local import LocalEngine
from earshot.jobs.submit import submit
from earshot.prompts import split_reasoning
from services.api.app import create_app
from services.api.routers.conversations import get_chat_engine


@pytest.fixture(scope="module")
def runtime(tiny_model_dir: Path) -> AF3Runtime:
    return AF3Runtime.load(tiny_model_dir, device="cpu")


@pytest.fixture
def engine(runtime: AF3Runtime, earshot_env: Settings) -> LocalEngine:
    return LocalEngine(runtime, earshot_env, model_id="tiny-af3")


def processed_job(tmp_path: Path, name: str, seconds: float, seed: int, *, summary: str | None = None) -> str:
    """A succeeded job over a real audio file (the pipeline itself is tested elsewhere)."""
    path = encode_file(tone_with_silences(seconds, seed=seed), tmp_path / name)
    with session_scope() as s:
        job, _ = submit(s, str(path), settings=get_settings(), tasks=["summarize"], engine="local")
        job.status = "succeeded"
        job.audio_file.duration_s = seconds
        if summary:
            s.add(m.Summary(job_id=job.id, level="file", idx=0, start_s=0, end_s=seconds, text=summary))
        return job.id


@pytest.fixture
def client(earshot_env: Settings, engine: LocalEngine) -> Iterator[TestClient]:
    app = create_app(earshot_env)
    app.dependency_overrides[get_chat_engine] = lambda: engine
    with session_scope() as s:
        _, token = create_key(s, name="chat-tests", scopes=["read", "submit"])
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def test_conversations_need_a_key_with_the_right_scope(client: TestClient, tmp_path: Path) -> None:
    job = processed_job(tmp_path, "scoped.wav", 3.0, seed=5)
    body = {"job_ids": [job], "question": "What do you hear?"}
    assert client.post("/v1/conversations", json=body, headers={"Authorization": ""}).status_code == 401
    with session_scope() as s:
        _, reader = create_key(s, name="reader", scopes=["read"])
    as_reader = {"Authorization": f"Bearer {reader}"}
    assert client.post("/v1/conversations", json=body, headers=as_reader).status_code == 403
    assert client.get("/v1/conversations", headers=as_reader).status_code == 200


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_two_clips_three_turns_stored_and_embedded_in_place(
    client: TestClient, engine: LocalEngine, earshot_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_a = processed_job(tmp_path, "kitchen.wav", 8.0, seed=1)
    job_b = processed_job(tmp_path, "street.flac", 6.0, seed=2)

    # turn 1: clip A
    r = client.post("/v1/conversations", json={"job_ids": [job_a], "question": "What do you hear?"})
    assert r.status_code == 201, r.text
    conv = r.json()
    cid = conv["id"]
    assert r.headers["location"] == f"/v1/conversations/{cid}"
    assert [c["number"] for c in conv["clips"]] == [1] and conv["clips"][0]["turn"] == 0
    assert [(t["seq"], t["role"]) for t in conv["turns"]] == [(0, "user"), (1, "assistant")]
    assert conv["turns"][0]["text"] == "What do you hear?" and conv["turns"][0]["clips"] == [1]

    # every prompt the model is sent from here on: the base AF3 hears ONE sound per prompt
    captured: list[torch.Tensor] = []
    original = engine.runtime.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        captured.append(kwargs["inputs_embeds"].detach().clone())
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.runtime.model, "generate", spy)

    # turn 2: clip B, referring back to A
    r = client.post(f"/v1/conversations/{cid}/turns", json={"question": "Compare it with the first one.", "job_ids": [job_b]})
    assert r.status_code == 201, r.text
    assert r.json()["question"]["clips"] == [2] and r.json()["answer"]["seq"] == 3

    # turn 3: no new audio; both clips are still heard, joined into one sound
    with session_scope() as s:
        prepared = service.prepare_turn(s, conversation_id=cid, question="Which one is longer?", settings=earshot_env)
    r = client.post(f"/v1/conversations/{cid}/turns", json={"question": "Which one is longer?"})
    assert r.status_code == 201, r.text

    rt = engine.runtime
    prompt = rt.prompt(prepared.turns)
    assert prompt.count(SOUND_TOKEN) == 1
    users = [t for t in prepared.turns if t.role == "user"]
    assert [t.audio for t in users] == [0, 0, 1]  # the question being asked carries the sound
    assert "Audio 1 is kitchen.wav" in users[0].text and "Audio 2 is street.flac" in users[1].text
    assert "audio 1 from 0:00 to 0:08; audio 2 from 0:09 to 0:15" in users[2].text
    assert [t.text for t in prepared.turns if t.role == "assistant"] == [
        conv["turns"][1]["text"], client.get(f"/v1/conversations/{cid}").json()["turns"][3]["text"]
    ]

    # the one audio is clip A, 1 s of silence, clip B
    (joined,) = prepared.audio
    with session_scope() as s:
        rows = s.scalars(
            select(ConversationClip).where(ConversationClip.conversation_id == cid).order_by(ConversationClip.idx)
        )
        a_audio, b_audio = (service.clip_audio(c, get_settings()) for c in list(rows))
    assert joined.shape[0] == a_audio.shape[0] + 16000 + b_audio.shape[0]
    assert np.array_equal(joined[: a_audio.shape[0]], a_audio)
    assert not joined[a_audio.shape[0] : a_audio.shape[0] + 16000].any()
    assert np.array_equal(joined[-b_audio.shape[0] :], b_audio)

    # in the tensors: one run of audio tokens (15 s at 25 tokens/s), the joined audio's embeddings
    audio_embeds = rt.encode(joined)
    assert audio_embeds.shape[0] == 375
    ids = torch.tensor(rt.prompt_ids(prompt, [375]))
    sound = (ids == rt.sound_id).nonzero().flatten()
    assert len(sound) == 375 and bool((torch.diff(sound) == 1).all())
    assert len(captured) == 2  # turns 2 and 3, one generate each
    for embeds in captured:
        assert embeds.shape[0] == 1  # one prompt
    embeds = captured[-1][0]
    assert embeds.shape[0] == ids.shape[0]
    assert torch.allclose(embeds[sound], audio_embeds, atol=1e-6)
    text_pos = (ids != rt.sound_id).nonzero().flatten()
    with torch.inference_mode():
        token_embeds = rt.model.get_input_embeddings()(ids[text_pos])
    assert torch.allclose(embeds[text_pos], token_embeds, atol=1e-6)

    # every turn is stored, in order
    with session_scope() as s:
        turns = list(s.scalars(select(ConversationTurn).where(ConversationTurn.conversation_id == cid).order_by(ConversationTurn.seq)))
        clips = list(s.scalars(select(ConversationClip).where(ConversationClip.conversation_id == cid).order_by(ConversationClip.idx)))
        row = s.get(Conversation, cid)
        assert row is not None and row.turn_count == 6 and row.clip_count == 2 and row.audio_s == pytest.approx(14.0)
    assert [(t.seq, t.role) for t in turns] == [(i, "user" if i % 2 == 0 else "assistant") for i in range(6)]
    assert [t.text for t in turns[::2]] == ["What do you hear?", "Compare it with the first one.", "Which one is longer?"]
    assert all(t.model_id == "tiny-af3" and t.engine == "local" for t in turns[1::2])
    assert [(c.idx, c.turn_seq, c.job_id) for c in clips] == [(0, 0, job_a), (1, 2, job_b)]
    assert client.get("/v1/conversations").json()[0]["id"] == cid


def test_stream_think_and_speak(client: TestClient, engine: LocalEngine, tmp_path: Path) -> None:
    job = processed_job(tmp_path, "alarm.wav", 5.0, seed=3)
    cid = client.post("/v1/conversations", json={"clips": [{"job_id": job, "start": 1.0, "end": 4.0}]}).json()["id"]
    r = client.post(
        f"/v1/conversations/{cid}/turns",
        json={"question": "When does the alarm start?", "think": True, "speak": True, "stream": True},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1][0] == "answer"
    streamed = "".join(d["text"] for e, d in events if e == "token")
    answer = events[-1][1]["answer"]
    assert answer["think"] is True and answer["adapter"] is True
    assert "No think adapter" not in (answer["note"] or "")  # only a cut answer may be noted (12 tokens here)
    assert split_reasoning(streamed) == (answer["thinking"], answer["text"])
    with session_scope() as s:
        stored = s.scalar(select(ConversationTurn).where(ConversationTurn.conversation_id == cid, ConversationTurn.seq == 1))
        assert stored is not None and stored.raw == streamed
    speech = client.get(f"/v1/conversations/{cid}/turns/1/speech")
    assert speech.status_code == 200 and speech.content[:4] == b"RIFF"
    assert client.get(f"/v1/conversations/{cid}/turns/0/speech").status_code == 404
    clip = client.get(f"/v1/conversations/{cid}").json()["clips"][0]
    assert (clip["start"], clip["end"], clip["turn"]) == (1.0, 4.0, 0)


def test_think_without_adapter_says_so(client: TestClient, engine: LocalEngine, tmp_path: Path) -> None:
    job = processed_job(tmp_path, "a.wav", 3.0, seed=4)
    weights, engine.runtime.think = engine.runtime.think, None  # as if think/ were absent
    try:
        r = client.post("/v1/conversations", json={"job_ids": [job], "question": "Why?", "think": True})
    finally:
        engine.runtime.think = weights
    answer = r.json()["turns"][1]
    assert answer["adapter"] is False and "No think adapter" in answer["note"]


def test_conversation_errors_are_problem_responses_with_codes(client: TestClient, earshot_env: Settings, tmp_path: Path) -> None:
    long_job = processed_job(tmp_path, "long.wav", 4.0, seed=5, summary="A long meeting about budgets.")
    assert client.get("/v1/conversations/nope").status_code == 404
    assert client.post("/v1/conversations/nope/turns", json={"question": "x"}).json()["code"] == "not_found"
    r = client.post("/v1/conversations", json={"job_ids": ["0b8e2a52-5a8e-4f38-9d1e-1f6f3f1c2b7a"]})
    assert r.status_code == 404 and r.json()["code"] == "job_not_found"
    with session_scope() as s:
        job = s.get(m.Job, long_job)
        assert job is not None
        job.status = "running"
    r = client.post("/v1/conversations", json={"job_ids": [long_job]})
    assert r.status_code == 409 and r.json()["code"] == "job_not_ready"
    with session_scope() as s:
        job = s.get(m.Job, long_job)
        assert job is not None
        job.status, job.audio_file.duration_s = "succeeded", 3600.0  # pretend it is an hour long
    r = client.post("/v1/conversations", json={"clips": [{"job_id": long_job, "start": 0, "end": 900}]})
    assert r.status_code == 422 and r.json()["code"] == "clip_too_long"
    r = client.post("/v1/conversations", json={"clips": [{"job_id": long_job, "start": 5000}]})
    assert r.status_code == 422 and r.json()["code"] == "clip_out_of_range"
    # default window of a long file: the first EARSHOT_CHAT_MAX_CLIP_S, plus its summary as context
    cid = client.post("/v1/conversations", json={"job_ids": [long_job]}).json()["id"]
    with session_scope() as s:
        clip = s.scalar(select(ConversationClip).where(ConversationClip.conversation_id == cid))
        assert clip is not None and (clip.start_s, clip.end_s) == (0.0, earshot_env.chat_max_clip_s)
        assert clip.context == "A long meeting about budgets."
        assert "of a 1:00:00 recording" in service.clip_header(1, clip)
    r = client.post(f"/v1/conversations/{cid}/turns", json={"question": "more", "clips": [{"job_id": long_job, "start": 300, "end": 600}, {"job_id": long_job, "start": 600, "end": 900}]})
    assert r.status_code == 422 and r.json()["code"] == "conversation_audio_limit"
    assert client.post(f"/v1/conversations/{cid}/turns", json={"question": ""}).status_code == 422
    assert client.delete(f"/v1/conversations/{cid}").status_code == 204
    assert client.get(f"/v1/conversations/{cid}").status_code == 404


def test_cli_ask_and_continue(earshot_env: Settings, engine: LocalEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import earshot.engines as engines
    from services.cli.main import app

    monkeypatch.setattr(engines, "get_engine", lambda *a, **k: engine)
    job = processed_job(tmp_path, "dog.wav", 4.0, seed=6)
    wav = tmp_path / "answer.wav"
    runner = CliRunner()
    r = runner.invoke(app, ["ask", f"{job[:8]}@0-3", "What animal is this?", "--json", "--speak", str(wav)])
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout.strip().splitlines()[-1])
    assert first["question"]["text"] == "What animal is this?" and first["question"]["clips"] == [1]
    assert wav.read_bytes()[:4] == b"RIFF"
    r = runner.invoke(app, ["ask", "-c", first["conversation_id"], "And is it loud?"])
    assert r.exit_code == 0, r.output
    assert "continue with: earshot ask -c" in r.output
    with session_scope() as s:
        conv = s.get(Conversation, first["conversation_id"])
        assert conv is not None and conv.turn_count == 4
    assert runner.invoke(app, ["ask", "only a question"]).exit_code != 0
    bad = runner.invoke(app, ["ask", "-c", first["conversation_id"], f"{job}@9-99", "x"])
    assert bad.exit_code == 2 and "clip_out_of_range" in bad.output


def test_engine_chat_validates_clip_count(engine: LocalEngine) -> None:
    from earshot.af3.chat import Turn
    from earshot.errors import InputError

    audio = np.zeros(16000, dtype=np.float32)
    with pytest.raises(InputError, match="attach 1 audio clip"):
        engine.chat([Turn("user", "hi", audio=1)], [])
    with pytest.raises(InputError, match="one sound per prompt"):
        engine.chat([Turn("user", "hi", audio=2)], [audio, audio])
    with pytest.raises(InputError, match="end with a user turn"):
        engine.chat([Turn("user", "hi", audio=1), Turn("assistant", "yo")], [audio])
    streamed = "".join(engine.chat_stream([Turn("user", "hi", audio=1)], [audio], max_new_tokens=5))
    answer = engine.chat([Turn("user", "hi", audio=1)], [audio], max_new_tokens=5)
    assert streamed == answer.text and answer.new_tokens <= 5


def test_a_missing_model_is_a_503_with_the_reason(
    earshot_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from earshot.engines import reset_engines
    from tests.fixtures.earshot import apply_env

    settings = apply_env(monkeypatch, model_path=str(tmp_path / "no-model"))
    reset_engines()
    job = processed_job(tmp_path, "nomodel.wav", 2.0, seed=7)
    with session_scope() as s:
        _, token = create_key(s, name="nomodel", scopes=["read", "submit"])
    try:
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as c:
            r = c.post("/v1/conversations", json={"job_ids": [job], "question": "Hello?"})
    finally:
        reset_engines()
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "model_not_found" and "no-model" in r.json()["detail"]


def test_a_streamed_answer_cut_by_its_limit_says_so(
    engine: LocalEngine, earshot_env: Settings, tmp_path: Path
) -> None:
    from earshot.engines.base import Generation

    job = processed_job(tmp_path, "cut.wav", 3.0, seed=6)
    with session_scope() as s:
        conv = service.create_conversation(s, settings=earshot_env, clips=[])
        cid = conv.id
    with session_scope() as s:
        prepared = service.prepare_turn(
            s, conversation_id=cid, question="Describe it.", settings=earshot_env,
            clips=[service.ClipIn(job_id=job)], max_new_tokens=1,
        )
    whole = engine.chat(prepared.turns, prepared.audio, max_new_tokens=1)
    # the stream returns the same Generation as its return value
    stream = engine.chat_stream(prepared.turns, prepared.audio, max_new_tokens=1)
    pieces: list[str] = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as end:
            final = end.value
            break
    assert isinstance(final, Generation) and final == whole and "".join(pieces) == whole.text
    events = list(service.stream_turn(prepared, engine=engine, settings=earshot_env))
    answer = events[-1].data["answer"]
    assert events[-1].event == "answer"
    assert whole.truncated  # one token is not enough for this (tiny, noisy) answer
    assert "token limit" in (answer["note"] or "")
