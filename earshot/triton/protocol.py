"""Names and error format shared by the Triton models (server side) and the engine (client side).

One module so that a renamed tensor breaks both sides at once instead of drifting apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from earshot.af3.chat import Turn
from earshot.errors import InputError

# ---- models -------------------------------------------------------------------------------
ENCODER = "af_whisper"
LLM = "af3_llm"
LLM_STREAM = "af3_llm_stream"
TTS = "tts"
ENSEMBLE = "af3"
VOICE_ENSEMBLE = "af3_voice"
ALL_MODELS = (ENCODER, LLM, LLM_STREAM, TTS, ENSEMBLE, VOICE_ENSEMBLE)

# ---- tensors ------------------------------------------------------------------------------
AUDIO = "audio"  # FP32 16 kHz mono PCM
AUDIO_EMBEDS = "audio_embeds"  # FP32 [n_tokens, llm_hidden], the encoder -> LLM contract
PROMPTS = "prompts"  # BYTES, plain user prompts; ChatML is built server-side
PROMPT = "prompt"  # BYTES, one prompt (the streaming model)
CONVERSATION = "conversation"  # BYTES, JSON turns [{"role", "text", "audio"}] (streaming model)
AUDIO_SAMPLES = "audio_samples"  # INT32, valid samples of each audio row (or clip, streaming)
CLIP_TOKENS = "clip_tokens"  # INT32, valid embedding rows of each audio (or clip, streaming)
MAX_NEW_TOKENS = "max_new_tokens"  # INT32
TEMPERATURE = "temperature"  # FP32, 0 = greedy
THINK = "think"  # BOOL
TEXT = "text"  # BYTES
STOP_REASON = "stop_reason"  # BYTES per answer: "eos" (the model ended it) or "length" (budget hit)
NEW_TOKENS = "new_tokens"  # INT32 per answer, the eos token included
PROMPT_TOKENS = "prompt_tokens"  # INT32 per answer, audio tokens included
ADAPTER = "adapter"  # BOOL per answer: the think adapter was applied to it
THINK_ADAPTER = "think_adapter"  # BOOL: a think LoRA is loaded on the serving side
FINAL = "final"  # BOOL, the last streamed response
WAVEFORM = "waveform"  # FP32 PCM in [-1, 1]
SAMPLES = "samples"  # INT32, valid length of each waveform row (rows are zero-padded)
SAMPLE_RATE = "sample_rate"  # INT32
VOICE = "voice"  # BYTES, which voice spoke

# ---- model parameters (config.pbtxt `parameters`) ----------------------------------------
PARAM_MODEL_PATH = "model_path"
PARAM_DTYPE = "dtype"
PARAM_CPU_THREADS = "cpu_threads"  # torch threads per instance when it runs on CPU
PARAM_MAX_NEW_TOKENS = "max_new_tokens"
PARAM_MAX_NEW_TOKENS_LIMIT = "max_new_tokens_limit"
PARAM_MAX_WINDOWS_PER_BATCH = "max_windows_per_batch"
PARAM_MAX_BATCH_ROWS = "max_batch_rows"  # sequences per batched generate (af3_llm)
PARAM_MAX_BATCH_TOKENS = "max_batch_tokens"  # rows x longest prompt per batched generate
PARAM_DECODE_MODE = "decode_mode"  # eager | static | compiled (earshot.af3.compiled)
PARAM_MAX_CACHE_LEN = "max_cache_len"  # static KV cache length; 0 = grow to the longest call
PARAM_ESPEAK_VOICE = "espeak_voice"
PARAM_ESPEAK_BINARY = "espeak_binary"
PARAM_NEURAL_VOICE_PATH = "neural_voice_path"

# ---- errors -------------------------------------------------------------------------------
# Triton wraps model errors (an ensemble prefixes the step), so the Earshot error code rides
# inside the message in a form that survives wrapping and is unlikely in any other text.
# "input" marks the caller's fault (bad audio, bad parameters): the client raises InputError,
# which fails the job without retries. Streamed errors carry no gRPC status, hence the mark.
_ERROR_RE = re.compile(r"\[earshot:(input:)?([a-z0-9_]+)\]\s*(.*)", re.DOTALL)


def format_error(code: str, message: str, *, bad_input: bool = False) -> str:
    return f"[earshot:{'input:' if bad_input else ''}{code}] {message}"


def parse_error(text: str) -> tuple[str | None, bool, str]:
    """(Earshot error code or None, caller's fault?, message without Triton's wrapping)."""
    match = _ERROR_RE.search(text)
    if match is None:
        return None, False, text
    return match.group(2), bool(match.group(1)), match.group(3).strip()


# ---- conversations ------------------------------------------------------------------------


def encode_turns(turns: Sequence[Turn]) -> str:
    return json.dumps([{"role": t.role, "text": t.text, "audio": t.audio} for t in turns])


def decode_turns(data: str) -> list[Turn]:
    try:
        raw = json.loads(data)
        return [Turn(str(t["role"]), str(t["text"]), int(t.get("audio", 0))) for t in raw]
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"conversation is not a JSON list of turns: {exc}", code="bad_conversation") from exc


def check_conversation(turns: Sequence[Turn], n_clips: int) -> None:
    """The rules both engines apply before building a conversation's prompt."""
    if not turns or turns[-1].role != "user":
        raise InputError("a conversation must end with a user turn", code="bad_conversation")
    wanted = sum(t.audio for t in turns)
    if wanted != n_clips or n_clips > 1:
        raise InputError(
            f"the turns attach {wanted} audio clip(s) and {n_clips} were given; the base "
            "AF3 hears one sound per prompt (join clips first, see earshot.chat)",
            code="prompt_audio_mismatch",
        )
