"""The one Settings object (``EARSHOT_*`` variables, or ``.env``).

One style everywhere: only deployables (services/*, workers/*) call ``get_settings()``. Library
functions that need configuration take ``settings: Settings`` keyword-only (or a ``Session``)
and open the database with ``session_scope(settings.database_url)``. A CLI flag becomes
``settings.model_copy(update={...})`` passed down, never an environment write.
Fields are grouped by area; each group says where it is used.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

HOME = Path(".earshot")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EARSHOT_", env_file=".env", extra="ignore")

    # Storage and persistence (earshot/storage.py, earshot/db/)
    database_url: str = Field(default=f"sqlite:///{HOME / 'earshot.db'}")
    output_url: str = Field(default=str((HOME / "outputs").resolve().as_uri()))
    scratch_url: str = Field(default=str((HOME / "scratch").resolve().as_uri()))
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"

    # Queueing (workers/): no broker means tasks run in-process (Celery eager mode)
    broker_url: str | None = None
    result_backend: str | None = None
    task_max_retries: int = 5
    task_retry_backoff_s: float = 2.0
    # transient trouble (database, broker, storage, engine) is retried with jittered backoff
    # for this long before the job fails as retryable; long enough for a restart or failover
    task_retry_window_s: float = 600.0
    task_retry_max_delay_s: float = 60.0
    # watchdog: a running step renews its lease every job_heartbeat_s; a non-terminal job
    # without progress for job_stale_after_s is re-enqueued by `earshot jobs reap`
    job_heartbeat_s: float = 20.0
    job_stale_after_s: float = 600.0
    # infrastructure failures are retried by the sweeper this long after they failed, this often
    job_retry_failed_after_s: float = 300.0
    job_infra_retry_limit: int = 5

    # Inference engine (earshot/engines/)
    engine: Literal["local", "triton"] = "local"
    model_path: str = str(HOME / "models" / "tiny")
    model_cache_dir: str = str(HOME / "cache" / "models")
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # the local engine's decode step (earshot/af3/compiled.py): "static" KV cache, or "compiled"
    # (static cache + CUDA graphs, CUDA only); the cache is sized for decode_max_cache_len tokens
    # so one graph serves every call (0: grown to the longest call seen)
    decode_mode: Literal["eager", "static", "compiled"] = "eager"
    decode_max_cache_len: int = 0
    triton_url: str = "127.0.0.1:8001"
    triton_timeout_s: float = 120.0
    triton_max_concurrency: int = 4
    triton_retry_budget_s: float = 30.0

    # Token budgets (earshot/budgets.py)
    # hard cap on every answer (the converter's generation_config uses 2048, greedy); each
    # task's own budget follows its audio (docs/transcription.md) and never exceeds this
    max_new_tokens: int = 2048
    summary_max_new_tokens: int = 512
    budget_min_tokens: int = 32
    budget_speech_tokens_per_s: float = 6.0  # transcripts: ~2.5 words/s of speech, 2x margin
    budget_audio_tokens_per_s: float = 1.0  # events, summaries, answers: per second of clip

    # Transcription chunks (earshot/audio/vad.py): silero-vad speech, merged into chunks (docs/transcription.md)
    vad_threshold: float = 0.4  # silero default 0.5 missed soft onsets after long pauses
    vad_max_chunk_s: float = 30.0
    vad_max_gap_s: float = 3.0

    # Summaries and chapters (earshot/reduce.py)
    # characters of child summaries per reduce call; keeps each call inside the LLM context
    reduce_budget_chars: int = 12000
    # chapters of the file summary: about one per chapter_target_s of audio, at most
    # max_chapters (each costs one title call)
    chapter_target_s: float = 900.0
    max_chapters: int = 12

    # Conversations (earshot/chat/): audio per clip (a longer file is windowed) and in total
    chat_max_clip_s: float = 300.0
    chat_max_audio_s: float = 600.0

    # Audio and jobs (earshot/pipeline/)
    max_segment_s: float = 600.0
    max_file_bytes: int = 4 * 1024**3
    # 4 h: a long meeting or podcast; tiny silent files must not buy hours of model work
    max_duration_s: float = 4 * 3600.0
    default_tasks: list[str] = Field(
        default_factory=lambda: ["transcribe", "caption", "events", "summarize", "speak"]
    )

    # Speech (earshot/speech.py)
    tts_voice: str = "en-us"
    espeak_binary: str = "espeak-ng"

    # API (services/api/)
    api_max_upload_bytes: int = 512 * 1024**2
    api_max_json_bytes: int = 64 * 1024  # every JSON request body
    # API-key lookups are cached per process this long: a revoked key works at most this much longer
    api_key_cache_s: float = 5.0
    api_statement_timeout_ms: int = 10_000  # PostgreSQL statement_timeout of API sessions
    api_presign_default_s: int = 900
    api_presign_max_s: int = Field(default=3600, le=3600)

    # Ingest: S3 events -> jobs (see docs/ingest.md). Lists are JSON in the environment.
    # Results of an ingested object go to s3://<bucket>/<ingest_output_prefix><key>.<ext>;
    # keys under this prefix never start a job (no loops).
    ingest_output_prefix: str = "earshot-output/"
    ingest_tasks: list[str] | None = None  # None: default_tasks
    ingest_buckets: list[str] = Field(default_factory=list)  # empty: any bucket that exists
    ingest_prefixes: list[str] = Field(default_factory=list)  # empty: every key
    ingest_exclude_prefixes: list[str] = Field(default_factory=list)
    ingest_suffixes: list[str] = Field(
        default_factory=lambda: [
            ".wav", ".mp3", ".flac", ".ogg", ".opus", ".oga", ".m4a", ".aac", ".webm",
            ".mp4", ".mkv", ".mov", ".wma", ".aif", ".aiff", ".amr", ".3gp",
        ]
    )  # empty: every suffix
    # 0: an empty upload becomes a job that fails with empty_file (a visible outcome)
    ingest_min_bytes: int = 0
    ingest_max_bytes: int | None = None  # None: max_file_bytes
    ingest_verify_objects: bool = True  # HEAD each object: existence, current etag, version
    ingest_max_receives: int = 5  # a message failing this often for unknown reasons is dead-lettered
    ingest_visibility_timeout_s: int = 120
    ingest_sqs_endpoint_url: str | None = None
    ingest_webhook_secret: str | None = None
    ingest_sns_verify: bool = True
    # SNS messages are accepted only from these topics; empty: none (docs/security.md)
    ingest_sns_topic_arns: list[str] = Field(default_factory=list)
    # signed webhook requests: timestamp within this many seconds of now; SNS: at most this old
    ingest_webhook_max_skew_s: int = 300
    ingest_sns_max_age_s: int = 3600

    # Completion callbacks: POST {job_id, status}, HMAC-SHA256 signed, retried with backoff
    callback_url: str | None = None  # default for jobs that carry no callback_url
    callback_secret: str | None = None
    callback_max_attempts: int = 8
    callback_backoff_s: float = 5.0
    callback_timeout_s: float = 10.0
    # SSRF controls (earshot/callbacks/ssrf.py): https only, public addresses only, unless set
    callback_allow_http: bool = False
    callback_allow_private: bool = False
    callback_allowed_hosts: list[str] = Field(default_factory=list)  # empty: any public host

    # Logging (earshot/logs.py)
    log_level: str = "INFO"
    log_json: bool = False  # one JSON object per line, for log collectors


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment. For deployables only."""
    return Settings()


def reset_settings() -> None:
    """Drop the cached Settings so a changed environment is read again (tests only)."""
    get_settings.cache_clear()
