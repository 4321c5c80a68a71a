"""Result writers: JSON, SubRip (SRT), WebVTT, plain text and Markdown.

Model timestamps are generated text, so subtitle writers never trust their input: cues are
sorted, cleaned and made strictly monotonic before they are written (see ``subtitle_cues``).
The validators check files from any source and are what the tests hold the writers to.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from earshot.results import JobReport, Utterance

__all__ = [
    "FORMATS",
    "MIN_CUE_DURATION_S",
    "Cue",
    "ExportFormat",
    "format_timestamp",
    "render",
    "subtitle_cues",
    "to_json",
    "to_markdown",
    "to_srt",
    "to_txt",
    "to_vtt",
    "validate_srt",
    "validate_vtt",
]

# Zero-length or inverted cues get this long; short enough not to shift later cues much,
# long enough for a player to show the text at all.
MIN_CUE_DURATION_S = 0.5


# --------------------------------------------------------------------------- cues


@dataclass(frozen=True)
class Cue:
    """A cleaned subtitle cue; times are integer milliseconds so output formats agree."""

    start_ms: int
    end_ms: int
    lines: tuple[str, ...]


def _clean_lines(text: str) -> tuple[str, ...]:
    # A blank line ends a cue in both SRT and VTT, so blank lines inside text must go.
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _to_ms(seconds: float) -> int | None:
    if not math.isfinite(seconds):
        return None
    return max(0, round(seconds * 1000))


def subtitle_cues(
    utterances: Iterable[Utterance], *, min_duration_s: float = MIN_CUE_DURATION_S
) -> list[Cue]:
    """Turn utterances into cues that every player accepts.

    Empty texts and non-finite times are dropped, negative times clamp to 0, cues are sorted
    by start; an overlapping cue is cut where the next one starts, and a cue shorter than
    ``min_duration_s`` is lengthened (pushing the next cue's start if needed). The result is
    strictly ordered: ``start < end <= next start``.
    """
    min_ms = max(1, round(min_duration_s * 1000))
    raw: list[tuple[int, int, tuple[str, ...]]] = []
    for utt in utterances:
        lines = _clean_lines(utt.text)
        start, end = _to_ms(utt.start), _to_ms(utt.end)
        if not lines or start is None or end is None:
            continue
        raw.append((start, end, lines))
    raw.sort(key=lambda item: (item[0], item[1]))

    cues: list[Cue] = []
    for i, (start, end, lines) in enumerate(raw):
        if cues:
            start = max(start, cues[-1].end_ms)
        if i + 1 < len(raw) and raw[i + 1][0] > start:
            end = min(end, raw[i + 1][0])
        if end - start < min_ms:
            end = start + min_ms
        cues.append(Cue(start, end, lines))
    return cues


def format_timestamp(ms: int, sep: str = ",") -> str:
    """``HH:MM:SS,mmm``; hours grow past two digits instead of wrapping."""
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{sep}{millis:03d}"


def _clock(seconds: float) -> str:
    """``HH:MM:SS`` for human-facing stamps (truncated, like a player's clock)."""
    ms = _to_ms(seconds) or 0
    return format_timestamp(ms)[:-4]


# --------------------------------------------------------------------------- writers


def to_json(report: JobReport) -> str:
    return report.model_dump_json(indent=2) + "\n"


def to_srt(utterances: Sequence[Utterance], *, min_duration_s: float = MIN_CUE_DURATION_S) -> str:
    blocks = []
    for index, cue in enumerate(subtitle_cues(utterances, min_duration_s=min_duration_s), 1):
        # "-->" in text confuses lenient SRT parsers that look for timing lines anywhere.
        text = "\n".join(line.replace("-->", "->") for line in cue.lines)
        timing = f"{format_timestamp(cue.start_ms)} --> {format_timestamp(cue.end_ms)}"
        blocks.append(f"{index}\n{timing}\n{text}\n")
    return "\n".join(blocks)


def _vtt_escape(line: str) -> str:
    # VTT payloads are parsed for tags and entities; escaping ">" also defuses "-->".
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(utterances: Sequence[Utterance], *, min_duration_s: float = MIN_CUE_DURATION_S) -> str:
    blocks = ["WEBVTT\n"]
    for cue in subtitle_cues(utterances, min_duration_s=min_duration_s):
        text = "\n".join(_vtt_escape(line) for line in cue.lines)
        timing = f"{format_timestamp(cue.start_ms, '.')} --> {format_timestamp(cue.end_ms, '.')}"
        blocks.append(f"{timing}\n{text}\n")
    return "\n".join(blocks)


def to_txt(utterances: Sequence[Utterance]) -> str:
    """One utterance per line, in time order; empty texts skipped."""
    ordered = sorted(utterances, key=lambda u: u.start if math.isfinite(u.start) else 0.0)
    lines = [" ".join(_clean_lines(u.text)) for u in ordered]
    text = "\n".join(line for line in lines if line)
    return text + "\n" if text else ""


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~])")


def _md(text: str) -> str:
    """Escape Markdown/HTML syntax: model output is untrusted and may be rendered in a UI."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_inline(text: str) -> str:
    return _md(" ".join(_clean_lines(text)))


def to_markdown(report: JobReport) -> str:
    out: list[str] = [f"# {_md_inline(report.source) or 'Untitled'}", ""]
    meta = [f"Job `{report.job_id.replace('`', '')}`", f"status **{_md_inline(report.status)}**"]
    if report.duration is not None and math.isfinite(report.duration):
        meta.append(f"duration {_clock(report.duration)}")
    out += [" · ".join(meta), ""]
    if report.error is not None:
        out += [
            f"> **Error** ({_md_inline(report.error.code)}): {_md_inline(report.error.message)}",
            "",
        ]

    if report.summary and report.summary.strip():
        out += ["## Summary", ""]
        out += [_md(line) if line.strip() else "" for line in report.summary.strip().splitlines()]
        out.append("")

    if report.chapters:
        out += ["## Chapters", ""]
        for ch in sorted(report.chapters, key=lambda c: c.start):
            line = f"- **[{_clock(ch.start)}]** {_md_inline(ch.title)}"
            if ch.summary.strip():
                line += f" — {_md_inline(ch.summary)}"
            out.append(line)
        out.append("")

    if report.captions:
        out += ["## Captions", ""]
        out += [f"- {_md_inline(c)}" for c in report.captions if c.strip()]
        out.append("")

    if report.events:
        out += ["## Events", "", "| Start | End | Event |", "| --- | --- | --- |"]
        for ev in sorted(report.events, key=lambda e: (e.start, e.end)):
            out.append(f"| {_clock(ev.start)} | {_clock(ev.end)} | {_md_inline(ev.label)} |")
        out.append("")

    transcript = [
        (u, " ".join(_clean_lines(u.text)))
        for u in sorted(report.transcript, key=lambda u: u.start)
    ]
    transcript = [(u, text) for u, text in transcript if text]
    if transcript:
        out += ["## Transcript", ""]
        for utt, text in transcript:
            out += [f"**[{_clock(utt.start)}]** {_md(text)}", ""]

    if report.reasoning:
        out += ["## Reasoning", ""]
        for item in report.reasoning:
            out += [f"### {_md_inline(item.question) or 'Question'}", ""]
            if item.thinking.strip():
                out += [
                    f"> {_md(line)}" if line.strip() else ">"
                    for line in item.thinking.strip().splitlines()
                ]
                out.append("")
            out += [f"**Answer:** {_md_inline(item.answer)}", ""]
            if item.adapter:
                out += ["*(reasoning adapter)*", ""]

    if report.outputs:
        out += ["## Files", ""]
        out += [
            f"- {_md_inline(name)}: `{uri.replace('`', '')}`"
            for name, uri in sorted(report.outputs.items())
        ]
        out.append("")

    return "\n".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- registry


class ExportFormat(NamedTuple):
    render: Callable[[JobReport], str]
    extension: str  # with the leading dot, ready for Path.with_suffix
    content_type: str


FORMATS: Mapping[str, ExportFormat] = {
    "json": ExportFormat(to_json, ".json", "application/json"),
    "srt": ExportFormat(
        lambda r: to_srt(r.transcript), ".srt", "application/x-subrip; charset=utf-8"
    ),
    "vtt": ExportFormat(lambda r: to_vtt(r.transcript), ".vtt", "text/vtt; charset=utf-8"),
    "txt": ExportFormat(lambda r: to_txt(r.transcript), ".txt", "text/plain; charset=utf-8"),
    "md": ExportFormat(to_markdown, ".md", "text/markdown; charset=utf-8"),
}


def render(report: JobReport, fmt: str) -> str:
    try:
        exporter = FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}") from None
    return exporter.render(report)


# --------------------------------------------------------------------------- validators

_SRT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})"
_SRT_TIMING = re.compile(rf"^{_SRT_TIME} --> {_SRT_TIME}$")
_VTT_TIME = r"(?:(\d{2,}):)?([0-5]\d):([0-5]\d)\.(\d{3})"
_VTT_TIMING = re.compile(rf"^{_VTT_TIME}[ \t]+-->[ \t]+{_VTT_TIME}(?:[ \t]+\S.*)?$")
_VTT_HEADER = re.compile(r"^WEBVTT(?:[ \t].*)?$")


def _ms(groups: Sequence[str | None]) -> int:
    hours, minutes, seconds, millis = (int(g) if g else 0 for g in groups)
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Blank-line separated blocks with the 1-based line number where each starts."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            blocks.append((start, current))
            current = []
    if current:
        blocks.append((start, current))
    return blocks


def _normalise(text: str) -> str:
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


class _Timeline:
    """Checks shared by both formats: positive length, sorted starts, optional no-overlap."""

    def __init__(self, allow_overlap: bool) -> None:
        self.allow_overlap = allow_overlap
        self.prev: tuple[int, int] | None = None

    def check(self, where: str, start: int, end: int) -> list[str]:
        problems = []
        if end <= start:
            problems.append(f"{where}: end is not after start")
        if self.prev is not None:
            if start < self.prev[0]:
                problems.append(f"{where}: starts before the previous cue")
            elif not self.allow_overlap and start < self.prev[1]:
                problems.append(f"{where}: overlaps the previous cue")
        self.prev = (start, end)
        return problems


def validate_srt(text: str, *, allow_overlap: bool = False) -> list[str]:
    """Problems found in an SRT document; an empty list means valid (no cues is valid)."""
    problems: list[str] = []
    timeline = _Timeline(allow_overlap)
    for expected, (line_no, block) in enumerate(_blocks(_normalise(text)), 1):
        where = f"line {line_no}"
        if block[0].strip() != str(expected):
            problems.append(f"{where}: expected cue index {expected}, got {block[0].strip()!r}")
        if len(block) < 2:
            problems.append(f"{where}: cue has no timing line")
            continue
        match = _SRT_TIMING.match(block[1].strip())
        if match is None:
            problems.append(f"line {line_no + 1}: bad timing line {block[1]!r}")
            continue
        if len(block) < 3:
            problems.append(f"{where}: cue has no text")
        problems += timeline.check(where, _ms(match.groups()[:4]), _ms(match.groups()[4:]))
    return problems


def validate_vtt(text: str, *, allow_overlap: bool = False) -> list[str]:
    """Problems found in a WebVTT document; an empty list means valid."""
    text = _normalise(text)
    lines = text.split("\n")
    if not _VTT_HEADER.match(lines[0]):
        return [f"line 1: expected 'WEBVTT' header, got {lines[0][:40]!r}"]
    problems: list[str] = []
    timeline = _Timeline(allow_overlap)
    blocks = _blocks(text)
    if blocks and len(blocks[0][1]) > 1 and any("-->" in line for line in blocks[0][1]):
        problems.append("line 2: header must be followed by a blank line")
    for line_no, block in blocks[1:]:
        where = f"line {line_no}"
        head = block[0]
        if head.startswith(("NOTE", "STYLE", "REGION")) and "-->" not in head:
            continue
        timing_at = 0 if "-->" in head else 1  # an optional cue identifier comes first
        if timing_at >= len(block):
            problems.append(f"{where}: cue has no timing line")
            continue
        match = _VTT_TIMING.match(block[timing_at])
        if match is None:
            problems.append(f"line {line_no + timing_at}: bad timing line {block[timing_at]!r}")
            continue
        # Unlike SRT, WebVTT allows a cue without text, so that is not a problem here.
        payload = block[timing_at + 1 :]
        if any("-->" in line for line in payload):
            problems.append(f"{where}: cue text contains '-->'")
        problems += timeline.check(where, _ms(match.groups()[:4]), _ms(match.groups()[4:]))
    return problems
