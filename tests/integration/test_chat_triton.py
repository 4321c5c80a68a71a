"""The same two-clip, three-turn conversation on the Triton engine: stored, and token-identical
to the local engine, whose prompt tensor positions tests/integration/test_chat.py checks."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from earshot.af3.runtime import AF3Runtime
from earshot.chat import service
from earshot.chat.models import ConversationTurn
from earshot.chat.schemas import ClipIn
from earshot.config import Settings
from earshot.db.session import session_scope
from earshot.engines import get_engine
from earshot.engines.local import LocalEngine
from tests.integration.test_chat import processed_job


def test_conversation_on_triton_matches_local(triton_env: Settings, tiny_model_dir: Path, tmp_path: Path) -> None:
    triton = get_engine(triton_env)
    assert triton.name == "triton"
    local = LocalEngine(AF3Runtime.load(tiny_model_dir, device="cpu"), triton_env, model_id="tiny")
    job_a = processed_job(tmp_path, "a.wav", 7.0, seed=11)
    job_b = processed_job(tmp_path, "b.flac", 5.0, seed=12)
    with session_scope() as s:
        cid = service.create_conversation(s, settings=triton_env, clips=[ClipIn(job_id=job_a)]).id

    script = [
        ("What do you hear?", [], False),
        ("Compare it with the first one.", [ClipIn(job_id=job_b)], False),
        ("Which one is longer?", [], True),
    ]
    for question, clips, think in script:
        with session_scope() as s:
            prepared = service.prepare_turn(
                s, conversation_id=cid, question=question, settings=triton_env, clips=clips,
                think=think, max_new_tokens=8,
            )
        with session_scope() as s:
            out = service.answer_turn(s, prepared, engine=triton, settings=triton_env)
        want = local.chat(prepared.turns, prepared.audio, think=think, max_new_tokens=8)
        with session_scope() as s:
            stored = s.scalar(
                select(ConversationTurn).where(
                    ConversationTurn.conversation_id == cid, ConversationTurn.seq == out.answer.seq
                )
            )
            assert stored is not None and stored.raw == want.text and stored.engine == "triton"
        assert out.answer.adapter is think  # the Triton LLM has the think adapter loaded
    assert len(prepared.audio) == 1  # both clips, joined into the one sound the last turn carries
    with session_scope() as s:
        rows = list(s.scalars(select(ConversationTurn).where(ConversationTurn.conversation_id == cid)))
    assert sorted(r.seq for r in rows) == list(range(6))
