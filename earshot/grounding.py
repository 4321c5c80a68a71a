"""Temporal grounding: turn AF3's timestamped answers into validated events on a timeline.

AF3's timestamps are generated text, not alignment. The parser here accepts the shapes the
model (and people) actually write, never raises on garbage, keeps every line's raw text, and
validates each time against the segment it was asked about:

- ranges: ``[3.0 - 7.5] siren``, ``3s-7.5s: siren``, ``From 00:03 to 00:07.5, a siren``,
  ``siren (3.0 - 7.5)``, ``A dog barks between 12 and 15 seconds.``, ``00:00:01,000 -->
  00:00:02,500 speech``;
- points (start == end): ``At 12.5s, music starts``, ``[12.5] speaker change``;
- JSON: ``[{"start": 3, "end": 7.5, "label": "siren"}]`` (also inside a code fence, with
  ``event``/``description``/``onset``/``offset``/``start_time``/``end_time`` keys).

Reversed ranges, times past the segment's end (beyond a small tolerance) and unreadable
times are dropped and counted with a reason; lines without any time are kept as
``untimed``. Times are relative to the segment; :meth:`GroundingResult.shifted` moves them
onto the file's timeline, and :func:`merge_across_cuts` joins an event the segmenter cut in
two.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

TOLERANCE_S = 0.5
MERGE_TOLERANCE_S = 1.0

# ---- times ------------------------------------------------------------------------------

# One time: a clock (1:02, 01:02:03.5, 00:00:01,500) or seconds (12, 12.5) or "1m 2.5s".
_CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?"
_MINSEC = r"\d+\s*m(?:in)?\s*\d+(?:\.\d+)?\s*s"
_SECONDS = r"\d+(?:\.\d+)?"
_UNIT = r"(?:\s*(?:ms|milliseconds?|s|secs?|seconds?)\b)?"
TIME = rf"(?:{_CLOCK}|{_MINSEC}|{_SECONDS}){_UNIT}"
_SEP = r"\s*(?:-->|->|–|—|-|~|\bto\b|\buntil\b|\btill\b|\band\b|,)\s*"

_RANGE_RE = re.compile(
    rf"(?P<open>[\[(<])?\s*(?:(?:from|between)\s+)?(?P<start>{TIME}){_SEP}(?P<end>{TIME})\s*(?P<close>[\])>])?",
    re.IGNORECASE,
)
# A point needs a marker that makes it a time: brackets, a unit, a clock, or "at".
_POINT_RE = re.compile(
    rf"(?:\[\s*(?P<b>{TIME})\s*\]|\(\s*(?P<p>{TIME})\s*\)|\bat\s+(?P<at>{TIME})"
    rf"|(?P<clock>\b{_CLOCK}\b)|(?P<unit>\b{_SECONDS}\s*(?:s|secs?|seconds?)\b))",
    re.IGNORECASE,
)
_LIST_MARK = re.compile(r"^\s*(?:[-*•·]+|\d{1,3}[.)]|#+)\s+")
_FILLER = re.compile(
    r"^(?:[\s:;,.\-–—|>]|\b(?:from|between|at|around|about|approximately|then|and|seconds?|secs?|s)\b)+"
    r"|(?:[\s:;,.\-–—|]|\b(?:from|between|at|around|seconds?|secs?)\b)+$",
    re.IGNORECASE,
)


class BadTime(ValueError):
    pass


def parse_time(text: str) -> float:
    """Seconds from '12.5', '12.5s', '1:02', '01:02:03.5', '00:00:01,500', '1m 2s', '1500ms'."""
    t = text.strip().lower()
    ms = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:ms|milliseconds?)", t)
    if ms:
        return float(ms.group(1)) / 1000.0
    t = re.sub(r"\s*(?:s|secs?|seconds?)$", "", t)
    m = re.fullmatch(r"(\d+)\s*m(?:in)?\s*(\d+(?:\.\d+)?)", t)
    if m:
        secs = float(m.group(2))
        if secs >= 60:
            raise BadTime(text)
        return int(m.group(1)) * 60 + secs
    if ":" in t:
        parts = t.replace(",", ".").split(":")
        value = 0.0
        for i, part in enumerate(parts):
            v = float(part)
            if i > 0 and v >= 60:
                raise BadTime(text)
            value = value * 60 + v
        return value
    try:
        value = float(t)
    except ValueError as exc:
        raise BadTime(text) from exc
    if not math.isfinite(value):
        raise BadTime(text)
    return value


def format_time(seconds: float, *, clock: bool = False) -> str:
    if not clock:
        return f"{seconds:.1f}s" if seconds != int(seconds) else f"{int(seconds)}s"
    whole = int(seconds)
    frac = seconds - whole
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    tail = f"{s:02d}" + (f"{frac:.1f}"[1:] if frac >= 0.05 else "")
    return f"{h}:{m:02d}:{tail}" if h else f"{m}:{tail}"


# ---- results ----------------------------------------------------------------------------

KINDS = ("speech", "speaker_change", "music", "topic", "sound")
_KIND_WORDS: list[tuple[str, re.Pattern[str]]] = [
    ("speaker_change", re.compile(r"speaker (?:change|switch|turn)|new speaker|(?:another|second|next) speaker", re.I)),
    ("topic", re.compile(r"\btopic\b|\bsubject\b|\bdiscuss", re.I)),
    ("music", re.compile(r"\bmusic|\bsong\b|\bsinging\b|\bmelody|\bguitar|\bpiano|\bdrum", re.I)),
    ("speech", re.compile(r"\bspeech\b|\bspeak|\btalk|\bvoice|\bconversation|\bsays?\b|\bnarrat", re.I)),
]


def event_kind(label: str) -> str:
    """A coarse category of an event label (speech, speaker_change, music, topic, sound)."""
    for kind, pattern in _KIND_WORDS:
        if pattern.search(label):
            return kind
    return "sound"


def normalize_label(label: str) -> str:
    """What makes two labels "the same event": case, articles and punctuation ignored."""
    words = re.sub(r"[^\w\s]", " ", label.lower()).split()
    return " ".join(w for w in words if w not in {"a", "an", "the"})


@dataclass(frozen=True)
class GroundedEvent:
    start: float
    end: float
    label: str
    raw: str
    kind: str = "sound"


@dataclass(frozen=True)
class DroppedLine:
    raw: str
    reason: str


@dataclass
class GroundingResult:
    events: list[GroundedEvent] = field(default_factory=list)
    dropped: list[DroppedLine] = field(default_factory=list)
    untimed: list[str] = field(default_factory=list)
    duplicates: int = 0
    raw: str = ""

    @property
    def dropped_count(self) -> int:
        return len(self.dropped)

    def shifted(self, offset_s: float) -> GroundingResult:
        return replace(
            self,
            events=[replace(e, start=e.start + offset_s, end=e.end + offset_s) for e in self.events],
        )


# ---- parsing ----------------------------------------------------------------------------


def _clean_label(text: str) -> str:
    label = text.strip().strip("\"'`*_").strip()
    prev = None
    while prev != label:
        prev = label
        label = _FILLER.sub("", label).strip().strip("\"'`*_").strip()
    return label


def _validate(start: float, end: float, duration_s: float, tolerance_s: float) -> str | None:
    if end < start:
        return "reversed"
    if start < 0 or end < 0:
        return "negative"
    if start > duration_s + tolerance_s or end > duration_s + tolerance_s:
        return "out_of_range"
    return None


def _pieces(line: str) -> list[tuple[str, str | None, str | None]]:
    """(label text, start, end) for each time expression on a line; end None for points."""
    ranges = list(_RANGE_RE.finditer(line))
    # A "range" of two bare numbers joined by "and"/"," is too weak unless bracketed or
    # introduced by from/between or followed by a unit: "3 and 4 dogs" is not a time.
    strong = [m for m in ranges if _strong_range(m)]
    if strong:
        out: list[tuple[str, str | None, str | None]] = []
        if len(strong) == 1:
            m = strong[0]
            out.append((line[: m.start()] + " " + line[m.end() :], m.group("start"), m.group("end")))
            return out
        # several ranges: each takes the text up to the next one (labels follow times), or,
        # when the line starts with text, the text before it (labels precede times)
        label_first = bool(_clean_label(line[: strong[0].start()]))
        for i, m in enumerate(strong):
            if label_first:
                lo = strong[i - 1].end() if i else 0
                text = line[lo : m.start()]
            else:
                hi = strong[i + 1].start() if i + 1 < len(strong) else len(line)
                text = line[m.end() : hi]
            out.append((re.sub(r"^\s*(?:and|,|;)\s+|\s*(?:,|;|\band\b)\s*$", "", text), m.group("start"), m.group("end")))
        return out
    points = list(_POINT_RE.finditer(line))
    if len(points) == 1:
        m = points[0]
        t = next(g for g in m.groups() if g)
        return [(line[: m.start()] + " " + line[m.end() :], t, None)]
    return []


def _strong_range(m: re.Match[str]) -> bool:
    text = m.group(0).lower()
    if m.group("open") or re.search(r"\b(?:from|between)\b", text):
        return True
    if re.search(r"-->|->|–|—|-|~|\bto\b|\buntil\b|\btill\b", text):
        return True
    return bool(re.search(r"\d\s*(?:s|secs?|seconds?|ms)\b|:", text))


def _json_events(text: str) -> list[dict[str, Any]] | None:
    body = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", body, re.DOTALL)
    if fence:
        body = fence.group(1).strip()
    if not body or body[0] not in "[{":
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), [data])
    if not isinstance(data, list):
        return None
    return [d for d in data if isinstance(d, dict)]


def _pick(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def _time_value(value: Any) -> float:
    if isinstance(value, bool):
        raise BadTime(str(value))
    if isinstance(value, int | float):
        if not math.isfinite(float(value)):
            raise BadTime(str(value))
        return float(value)
    if isinstance(value, str):
        return parse_time(value)
    raise BadTime(repr(value))


def parse_grounding(
    text: str,
    duration_s: float,
    *,
    tolerance_s: float = TOLERANCE_S,
    require_label: bool = True,
) -> GroundingResult:
    """Events with times relative to a segment of ``duration_s`` seconds. Never raises."""
    result = GroundingResult(raw=text)
    seen: set[tuple[float, float, str]] = set()

    def add(start_s: str | float | None, end_s: str | float | None, label: str, raw: str) -> None:
        try:
            start = _time_value(start_s)
            end = start if end_s is None else _time_value(end_s)
        except (BadTime, ValueError):
            result.dropped.append(DroppedLine(raw=raw, reason="bad_time"))
            return
        reason = _validate(start, end, duration_s, tolerance_s)
        if reason is None and require_label and not label:
            reason = "no_label"
        if reason is not None:
            result.dropped.append(DroppedLine(raw=raw, reason=reason))
            return
        start, end = min(start, duration_s), min(end, duration_s)
        key = (round(start, 2), round(end, 2), normalize_label(label))
        if key in seen:
            result.duplicates += 1
            return
        seen.add(key)
        result.events.append(GroundedEvent(start=start, end=end, label=label, raw=raw, kind=event_kind(label)))

    items = _json_events(text)
    if items is not None:
        for d in items:
            raw = json.dumps(d, ensure_ascii=False)
            label = str(_pick(d, "label", "event", "description", "name", "text", "sound") or "").strip()
            start = _pick(d, "start", "start_time", "onset", "begin", "from", "time", "timestamp")
            end = _pick(d, "end", "end_time", "offset", "stop", "to")
            if start is None:
                result.untimed.append(raw)
                continue
            add(start, end, label, raw)
        return result

    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("```"):
            continue
        body = _LIST_MARK.sub("", line)
        pieces = _pieces(body)
        if not pieces:
            result.untimed.append(line)
            continue
        for label_text, start, end in pieces:
            add(start, end, _clean_label(label_text), line)
    return result


# ---- timeline helpers -------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineEvent:
    """An event on the file's timeline; ``key`` is whatever the caller needs back (a row id)."""

    start: float
    end: float
    label: str
    raw: str = ""
    key: Any = None


@dataclass
class MergeResult:
    events: list[TimelineEvent]
    # (survivor key, absorbed keys): what a store must update and delete
    merges: list[tuple[Any, list[Any]]] = field(default_factory=list)

    @property
    def merged(self) -> int:
        return sum(len(absorbed) for _, absorbed in self.merges)


def merge_across_cuts(
    events: Iterable[TimelineEvent],
    cuts: Sequence[float],
    *,
    tolerance_s: float = MERGE_TOLERANCE_S,
) -> MergeResult:
    """Join events the segmenter cut in two: same label, one ending at a cut, one starting there.

    ``cuts`` are the segment boundaries on the file's timeline (every segment end but the
    last). An event ending within ``tolerance_s`` of a cut and an event with the same
    (normalized) label starting within ``tolerance_s`` of it, with at most ``tolerance_s``
    between them (or overlapping), become one event from the first start to the last end.
    Chains across several cuts join too. The result is a fixpoint: merging it again
    changes nothing, so a rerun of finalize is harmless.
    """
    # each entry: the event and the keys of the events it has absorbed
    pool: list[tuple[TimelineEvent, list[Any]]] = [
        (e, []) for e in sorted(events, key=lambda e: (e.start, e.end))
    ]
    changed = True
    while changed:
        changed = False
        for cut in cuts:
            best: tuple[float, int, int] | None = None
            for i, (a, _) in enumerate(pool):
                if not (a.start < cut and abs(a.end - cut) <= tolerance_s):
                    continue
                for j, (b, _) in enumerate(pool):
                    if i == j or not (b.end > cut and abs(b.start - cut) <= tolerance_s):
                        continue
                    if b.start < a.start or b.start - a.end > tolerance_s:
                        continue
                    if normalize_label(a.label) != normalize_label(b.label):
                        continue
                    gap = abs(b.start - a.end)
                    if best is None or gap < best[0]:
                        best = (gap, i, j)
            if best is None:
                continue
            _, i, j = best
            (a, a_absorbed), (b, b_absorbed) = pool[i], pool[j]
            joined = TimelineEvent(
                start=min(a.start, b.start),
                end=max(a.end, b.end),
                label=a.label,
                raw="\n".join(r for r in (a.raw, b.raw) if r),
                key=a.key,
            )
            rest = [p for k, p in enumerate(pool) if k not in (i, j)]
            pool = sorted([*rest, (joined, [*a_absorbed, b.key, *b_absorbed])], key=lambda p: (p[0].start, p[0].end))
            changed = True
    return MergeResult(
        events=[e for e, _ in pool], merges=[(e.key, absorbed) for e, absorbed in pool if absorbed]
    )


# ---- times inside free text ---------------------------------------------------------------

_TEXT_TIME_RE = re.compile(
    rf"(?P<range>\[\s*(?P<rs>{TIME}){_SEP}(?P<re>{TIME})\s*\])"
    rf"|(?P<clock>(?<![\d:.]){_CLOCK}(?![\d:]))"
    rf"|(?P<unit>(?<![\d.:]){_SECONDS}\s*(?:s|secs?|seconds?)\b)",
    re.IGNORECASE,
)


def absolutize_times(text: str, offset_s: float, duration_s: float, *, tolerance_s: float = TOLERANCE_S) -> str:
    """Rewrite clip-relative times in an answer ("at 12 s", "0:12", "[3 - 7]") as file times.

    Only explicit times are touched (a unit, a clock, or a bracketed range) and only when
    they fit inside the clip, so "3 dogs" or "a 90 s song" in a 60 s clip stay as written.
    """
    if offset_s == 0:
        return text

    def fits(v: float) -> bool:
        return 0 <= v <= duration_s + tolerance_s

    def sub(m: re.Match[str]) -> str:
        try:
            if m.group("range"):
                a, b = parse_time(m.group("rs")), parse_time(m.group("re"))
                if not (fits(a) and fits(b)) or b < a:
                    return m.group(0)
                clock = ":" in m.group("rs")
                return f"[{format_time(a + offset_s, clock=clock)} - {format_time(b + offset_s, clock=clock)}]"
            if m.group("clock"):
                v = parse_time(m.group("clock"))
                return format_time(v + offset_s, clock=True) if fits(v) else m.group(0)
            v = parse_time(m.group("unit"))
            return format_time(v + offset_s) if fits(v) else m.group(0)
        except BadTime:
            return m.group(0)

    return _TEXT_TIME_RE.sub(sub, text)


# ---- stored events (finalize) -------------------------------------------------------------


def merge_cut_events(session: Session, *, job_id: str) -> dict[str, int]:
    """Finalize-time grounding cleanup: join events a segment cut split, count dropped lines.

    Events of one label that end at a segment boundary and start again right after it become
    one row (the first keeps its id; its raw text holds both answers). Dropped lines are
    recounted from each segment's raw answer with the same parser, so the numbers hold on a
    rerun. Idempotent: the merge is a fixpoint.
    """
    from sqlalchemy import select

    from earshot.db import models as m

    segments = list(
        session.scalars(select(m.Segment).where(m.Segment.job_id == job_id).order_by(m.Segment.index))
    )
    rows = {r.id: r for r in session.scalars(select(m.Event).where(m.Event.job_id == job_id))}
    cuts = [seg.end_s for seg in segments[:-1]]
    merged = merge_across_cuts(
        (TimelineEvent(start=r.start_s, end=r.end_s, label=r.label, raw=r.raw or "", key=r.id) for r in rows.values()),
        cuts,
    )
    by_key = {e.key: e for e in merged.events}
    for survivor, absorbed in merged.merges:
        row, event = rows[survivor], by_key[survivor]
        row.start_s, row.end_s, row.raw = event.start, event.end, event.raw
        for key in absorbed:
            session.delete(rows[key])
    dropped = 0
    for seg in segments:
        text = (seg.raw or {}).get("events")
        if text:
            dropped += parse_grounding(text, seg.end_s - seg.start_s).dropped_count
    return {"events_merged": merged.merged, "events_dropped": dropped, "events": len(merged.events)}

