"""Training data: AF3 conversation manifests -> tokenised, windowed, padded batches.

A manifest is JSON (a list) or JSONL, one record per sample::

    {"sound": URI | [URIs], "conversations": [{"from": "human", "value": "<sound>\\n..."},
                                              {"from": "gpt", "value": "..."}]}

Audio is fetched (local disk or S3, cached on local disk), decoded and cut into 30 s windows by
the same code inference uses. Prompts are rendered by ``earshot.af3.chat.render`` and ``<sound>``
is expanded by ``earshot.af3.runtime.expand_sound_tokens``, so training sees exactly the token
layout the engine builds. The loss falls on assistant tokens (and their ``<|im_end|>``) only.

Bad records are skipped and counted, never fatal: ``malformed`` (not a conversation),
``missing_audio``, ``undecodable`` and ``too_long`` (more windows than the stage allows, or a
sequence over ``max_seq_len``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from earshot import storage
from earshot.af3.chat import SOUND_TOKEN, Turn, render, with_think_suffix
from earshot.af3.runtime import (
    MAX_WINDOWS,
    SAMPLE_RATE,
    WINDOW_S,
    audio_features,
    expand_sound_tokens,
    window_token_counts,
)
from earshot.config import Settings
from earshot.errors import AudioError, InputError, StorageError
from earshot.training.step import IGNORE, Batch, collate

log = logging.getLogger(__name__)

SKIP_REASONS = ("malformed", "missing_audio", "undecodable", "too_long")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IM_END = "<|im_end|>"
# How far a sample that fails at load time looks ahead for a good one to stand in for it.
_MAX_SUBSTITUTES = 64


class BadRecord(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class SkipLog:
    """Skipped records by reason, each record counted once however often it is met."""

    counts: Counter[str] = field(default_factory=Counter)
    seen: set[str] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)

    def add(self, key: str, reason: str, message: str) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        self.counts[reason] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{key}: {reason}: {message}")
        log.warning("skipping record %s (%s): %s", key, reason, message)
        return True

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "reasons": dict(self.counts), "examples": list(self.examples)}


@dataclass(frozen=True)
class Record:
    key: str
    sounds: tuple[str, ...]
    turns: tuple[tuple[str, str], ...]
    think: bool


@dataclass(frozen=True)
class Prepared:
    record: Record
    paths: tuple[str, ...]
    windows: int | None


# ---- manifests ----------------------------------------------------------------------------------


def _manifest_dir(uri: str) -> str:
    ref = storage.parse_uri(uri)
    parent = ref.key.rsplit("/", 1)[0] + "/" if "/" in ref.key else ""
    return storage.ObjectRef(ref.scheme, ref.bucket, parent).uri


def iter_manifest(uri: str, *, settings: Settings) -> Iterator[tuple[int, Any]]:
    """(index, raw record or BadRecord) for a JSON list or a JSONL manifest, streamed."""
    with storage.open_read(uri, settings=settings) as stream:
        first = b""
        while True:
            ch = stream.read(1)
            if not ch or not ch.isspace():
                first = ch
                break
        if first == b"[":
            # A JSON array must be parsed whole; manifests of that form are small in practice.
            data = json.loads(first + stream.read())
            yield from enumerate(data)
            return
        buffer = first + stream.readline()
        index = 0
        while buffer:
            text = buffer.decode("utf-8", errors="replace").strip()
            if text:
                try:
                    yield index, json.loads(text)
                except json.JSONDecodeError as exc:
                    yield index, BadRecord("malformed", f"not JSON: {exc.msg}")
                index += 1
            buffer = stream.readline()


def _resolve_sound(value: str, base: str) -> str:
    if "://" in value or value.startswith("/"):
        return storage.parse_uri(value).uri
    return storage.join_uri(base, value)


def parse_record(raw: Any, *, key: str, base: str, think: bool) -> Record:
    """Validate one manifest entry; raises BadRecord("malformed", ...)."""
    if isinstance(raw, BadRecord):
        raise raw
    if not isinstance(raw, dict):
        raise BadRecord("malformed", "record is not a JSON object")
    convs = raw.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise BadRecord("malformed", "no 'conversations' list")
    sound = raw.get("sound", raw.get("audio"))
    if sound is None:
        sounds: list[str] = []
    elif isinstance(sound, str):
        sounds = [sound]
    elif isinstance(sound, list) and all(isinstance(s, str) for s in sound):
        sounds = list(sound)
    else:
        raise BadRecord("malformed", "'sound' must be a URI or a list of URIs")
    turns: list[tuple[str, str]] = []
    for turn in convs:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise BadRecord("malformed", "every turn needs 'from' and a string 'value'")
        role = ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise BadRecord("malformed", f"unknown speaker {turn.get('from')!r}")
        turns.append((role, turn["value"]))
    if not any(r == "assistant" and t.strip() for r, t in turns):
        raise BadRecord("malformed", "no non-empty assistant ('gpt') turn to learn from")
    if any(r == "assistant" and SOUND_TOKEN in t for r, t in turns):
        raise BadRecord("malformed", f"{SOUND_TOKEN} inside an assistant turn")
    placeholders = sum(t.count(SOUND_TOKEN) for r, t in turns if r != "assistant")
    if placeholders == 0 and sounds:
        # AF3's own data puts the sound first in the first question; accept records without it.
        first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
        if first_user is None:
            raise BadRecord("malformed", "audio but no user turn")
        role, text = turns[first_user]
        turns[first_user] = (role, SOUND_TOKEN * len(sounds) + "\n" + text)
    elif placeholders != len(sounds):
        raise BadRecord(
            "malformed", f"{placeholders} {SOUND_TOKEN} placeholders for {len(sounds)} audio files"
        )
    return Record(
        key=key,
        sounds=tuple(_resolve_sound(s, base) for s in sounds),
        turns=tuple(turns),
        think=think,
    )


def read_records(uri: str, *, dataset: str, think: bool, skips: SkipLog, settings: Settings) -> list[Record]:
    base = _manifest_dir(uri)
    records: list[Record] = []
    for index, raw in iter_manifest(uri, settings=settings):
        key = f"{dataset}:{index}"
        try:
            records.append(parse_record(raw, key=key, base=base, think=think))
        except BadRecord as bad:
            skips.add(key, bad.reason, bad.message)
    return records


# ---- audio: fetch, check --------------------------------------------------------------------------


class AudioCache:
    """Local paths for audio URIs: local files as they are, S3 objects downloaded once."""

    def __init__(self, cache_dir: str | Path, *, settings: Settings) -> None:
        self.dir = Path(cache_dir)
        self.settings = settings

    def local_path(self, uri: str) -> Path:
        ref = storage.parse_uri(uri)
        if ref.scheme == "file":
            if not ref.path.is_file():
                raise BadRecord("missing_audio", f"{uri}: no such file")
            return ref.path
        digest = hashlib.sha256(uri.encode()).hexdigest()[:24]
        target = self.dir / "audio" / digest[:2] / f"{digest}{Path(ref.key).suffix}"
        if target.is_file():
            return target
        try:
            storage.download_to(uri, target, settings=self.settings)
        except StorageError as exc:
            if exc.code == "not_found":
                raise BadRecord("missing_audio", f"{uri}: no such object") from exc
            raise
        return target


def check_record(record: Record, *, cache: AudioCache, max_windows: int) -> Prepared:
    """Fetch and probe a record's audio; raises BadRecord. Only headers are read here: audio that
    decodes badly past its header is caught when the sample is built."""
    from earshot.audio.decode import probe

    paths: list[str] = []
    windows: int | None = 0
    for uri in record.sounds:
        path = cache.local_path(uri)
        try:
            info = probe(path)
        except AudioError as exc:
            raise BadRecord("undecodable", f"{uri}: {exc.message}") from exc
        except OSError as exc:
            raise BadRecord("missing_audio", f"{uri}: {exc}") from exc
        paths.append(str(path))
        if info.duration_s is None or windows is None:
            windows = None
        else:
            windows += max(1, math.ceil(info.duration_s / WINDOW_S - 1e-6))
    if windows is not None and windows > max_windows:
        raise BadRecord("too_long", f"{windows} audio windows of 30 s; this stage allows {max_windows}")
    return Prepared(record=record, paths=tuple(paths), windows=windows)


def prepare_records(
    records: Sequence[Record],
    *,
    cache: AudioCache,
    max_windows: int,
    skips: SkipLog,
    threads: int = 8,
) -> list[Prepared]:
    """Check every record (in parallel: S3 downloads dominate); keeps manifest order."""

    def one(rec: Record) -> Prepared | BadRecord:
        try:
            return check_record(rec, cache=cache, max_windows=max_windows)
        except BadRecord as bad:
            return bad

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(one, records))
    good: list[Prepared] = []
    for rec, res in zip(records, results, strict=True):
        if isinstance(res, BadRecord):
            skips.add(rec.key, res.reason, res.message)
        else:
            good.append(res)
    return good


# ---- tokens ---------------------------------------------------------------------------------------


def encode_conversation(
    tokenizer: Any, turns: Sequence[tuple[str, str]], *, think: bool, sound_id: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels with ``<sound>`` not yet expanded.

    Every prompt part is the exact ``render`` text (the checkpoint's template) the engine would send for that point of the
    conversation; labels are the assistant's answer plus ``<|im_end|>`` (so the model learns to
    stop). Label positions of ``<sound>`` hold ``sound_id`` so one expansion pass serves both.
    """
    chat = list(turns)
    if think:
        last_user = max((i for i, (r, _) in enumerate(chat) if r == "user"), default=-1)
        if last_user >= 0:
            chat[last_user] = ("user", with_think_suffix(chat[last_user][1]))
    ids: list[int] = []
    labels: list[int] = []
    consumed = ""
    as_turns = [Turn(role, text) for role, text in chat]
    for k, (role, text) in enumerate(chat):
        if role != "assistant":
            continue
        prompt = render(tokenizer, as_turns[:k])
        if not prompt.startswith(consumed):
            raise BadRecord("malformed", "conversation does not render as a prefix-stable chat")
        delta = prompt[len(consumed) :]
        part = tokenizer(delta, add_special_tokens=False)["input_ids"]
        ids.extend(part)
        labels.extend(sound_id if t == sound_id else IGNORE for t in part)
        answer = tokenizer(text + IM_END, add_special_tokens=False)["input_ids"]
        ids.extend(answer)
        labels.extend(answer)
        consumed = prompt + text + IM_END
    return ids, labels


@dataclass
class Sample:
    key: str
    input_ids: list[int]
    labels: list[int]
    features: torch.Tensor | None
    feature_mask: torch.Tensor | None
    skipped: list[tuple[str, str, str]] = field(default_factory=list)


class ConversationDataset(Dataset[Sample]):
    """Builds samples on demand (in DataLoader workers when there are any).

    A sample whose audio fails to decode is replaced by the next good one, so every rank keeps
    the same number of samples per step; the failure travels with the sample to be counted.
    """

    def __init__(
        self,
        items: Sequence[Prepared],
        *,
        tokenizer: Any,
        feature_extractor: Any,
        sound_id: int,
        max_windows: int,
        max_seq_len: int | None = None,
    ) -> None:
        self.items = list(items)
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.sound_id = sound_id
        self.max_windows = max_windows
        self.max_seq_len = max_seq_len
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def build(self, index: int) -> Sample:
        from earshot.audio.decode import decode_all

        item = self.items[index]
        feats: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        clip_tokens: list[int] = []
        windows = 0
        for uri, path in zip(item.record.sounds, item.paths, strict=True):
            try:
                audio = decode_all(path, max_duration_s=self.max_windows * WINDOW_S)
            except AudioError as exc:
                reason = "too_long" if exc.code == "too_long" else "undecodable"
                raise BadRecord(reason, f"{uri}: {exc.message}") from exc
            except OSError as exc:
                raise BadRecord("missing_audio", f"{uri}: {exc}") from exc
            try:
                f, m = audio_features(
                    self.feature_extractor, audio, max_windows=min(self.max_windows, MAX_WINDOWS)
                )
            except InputError as exc:
                reason = "too_long" if exc.code == "audio_too_long" else "undecodable"
                raise BadRecord(reason, f"{uri}: {exc.message}") from exc
            windows += int(f.shape[0])
            feats.append(f)
            masks.append(m)
            clip_tokens.append(sum(window_token_counts(m)))
        if windows > self.max_windows:
            raise BadRecord(
                "too_long", f"{windows} audio windows of 30 s; this stage allows {self.max_windows}"
            )
        ids, labels = encode_conversation(
            self.tokenizer, item.record.turns, think=item.record.think, sound_id=self.sound_id
        )
        try:
            ids = expand_sound_tokens(ids, self.sound_id, clip_tokens)
            labels = expand_sound_tokens(labels, self.sound_id, clip_tokens)
        except InputError as exc:
            raise BadRecord("malformed", exc.message) from exc
        labels = [IGNORE if t == self.sound_id else t for t in labels]
        if self.max_seq_len is not None and len(ids) > self.max_seq_len:
            raise BadRecord("too_long", f"{len(ids)} tokens; max_seq_len is {self.max_seq_len}")
        return Sample(
            key=item.record.key,
            input_ids=ids,
            labels=labels,
            features=torch.cat(feats) if feats else None,
            feature_mask=torch.cat(masks) if masks else None,
        )

    def __getitem__(self, index: int) -> Sample:
        failures: list[tuple[str, str, str]] = []
        n = len(self.items)
        for offset in range(min(n, _MAX_SUBSTITUTES)):
            j = (index + offset) % n
            if j in self._bad:
                continue
            try:
                sample = self.build(j)
            except BadRecord as bad:
                self._bad.add(j)
                failures.append((self.items[j].record.key, bad.reason, bad.message))
                continue
            sample.skipped = failures
            return sample
        raise RuntimeError(
            f"no loadable sample within {_MAX_SUBSTITUTES} records of #{index}: "
            + "; ".join(f"{k}: {m}" for k, _, m in failures[:3])
        )


class Collator:
    """Picklable collate_fn (DataLoader workers)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        skipped = [s for sample in samples for s in sample.skipped]
        return collate(
            [(s.input_ids, s.labels, s.features, s.feature_mask) for s in samples],
            pad_id=self.pad_id,
            skipped=skipped,
        )


# ---- order: mixing, epochs, ranks ------------------------------------------------------------------


class MixturePlan:
    """Which samples each rank sees at each optimizer step, as a pure function of the step.

    An epoch takes ``weight`` x the size of each dataset (2.0 = every record twice, 0.5 = a
    fresh random half each epoch), shuffled with the seed and the epoch number. A resumed run
    therefore sees exactly the samples the crashed one would have, from the step it resumes at.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        *,
        batch_size: int,
        accumulation: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if not any(sizes):
            raise ValueError("no usable samples")
        self.sizes = list(sizes)
        self.weights = list(weights)
        self.offsets = [int(x) for x in np.cumsum([0, *self.sizes[:-1]])]
        self.batch_size = batch_size
        self.accumulation = accumulation
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.per_step = batch_size * accumulation * world_size
        self.epoch_len = sum(self._take(n, w) for n, w in zip(self.sizes, self.weights, strict=True))
        self.steps_per_epoch = max(1, self.epoch_len // self.per_step)
        self._cache: tuple[int, list[int]] | None = None

    @staticmethod
    def _take(n: int, weight: float) -> int:
        return 0 if n == 0 else max(1, round(n * weight))

    def epoch_indices(self, epoch: int) -> list[int]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        out: list[int] = []
        for n, w, off in zip(self.sizes, self.weights, self.offsets, strict=True):
            k = self._take(n, w)
            while k > 0:
                perm = rng.permutation(n)[: min(k, n)]
                out.extend(int(off + i) for i in perm)
                k -= len(perm)
        order = rng.permutation(len(out))
        indices = [out[i] for i in order]
        self._cache = (epoch, indices)
        return indices

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's ``accumulation`` micro-batches of global optimizer step ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        idx = self.epoch_indices(epoch)
        start = within * self.per_step
        # An epoch smaller than one global batch wraps around instead of starving a rank.
        chunk = [idx[(start + k) % len(idx)] for k in range(self.per_step)]
        mine = chunk[self.rank :: self.world_size]
        return [mine[a * self.batch_size : (a + 1) * self.batch_size] for a in range(self.accumulation)]

    def total_steps(self, *, epochs: float, max_steps: int) -> int:
        if max_steps > 0:
            return max_steps
        return max(1, math.ceil(epochs * self.steps_per_epoch))


class StepSampler(Sampler[list[int]]):
    """Micro-batch indices for steps ``start`` .. ``stop - 1``, in training order."""

    def __init__(self, plan: MixturePlan, start: int, stop: int) -> None:
        self.plan = plan
        self.start = start
        self.stop = stop

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield from self.plan.micro_batches(step)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.plan.accumulation


def audio_seconds(samples: int) -> float:
    return samples / SAMPLE_RATE
