"""Task prompts and the parsers of model output that are not about time.

Timed answers (events) are parsed in one place, ``earshot.grounding``. Every parser here
tolerates garbage and never raises: the raw text is always kept next to what it gave.
"""

from __future__ import annotations

import re

TASKS = ("transcribe", "caption", "events", "summarize", "think", "speak")
# Tasks answered per segment by the model; "speak" is done once per file at the end.
SEGMENT_TASKS = ("transcribe", "caption", "events", "summarize", "think")

# AF3's trained ASR prompt; asked once per speech chunk of at most 30 s (earshot.audio.vad).
TRANSCRIBE = "Transcribe the input speech."
CAPTION = "Describe the audio in one sentence."
EVENTS = (
    "List every event in the audio with its time: sound events (alarms, sirens, animals, "
    "vehicles, laughter, applause), speech starting or stopping, a speaker change, music "
    "starting or stopping, and a new topic being discussed (write it as: topic: <subject>). "
    "Put each event on its own line with its start and end time in seconds, like: "
    "[3.0 - 7.5] siren. For an instant, give one time, like: [12.0] speaker change."
)
SUMMARIZE = "Summarize the content of the audio in a few sentences."
THINK_QUESTION = "What is happening in this audio? Explain what you hear."
REDUCE = (
    "Here are summaries of consecutive parts of one recording, in order. Write one coherent "
    "summary of the whole recording.\n\n{parts}"
)
REDUCE_ANSWERS = (
    'The question "{question}" was answered for consecutive parts of one recording. Combine '
    "the answers into one answer for the whole recording.\n\n{parts}"
)
CHAPTER_TITLE = (
    "Here is a summary of one part of a recording. Give this part a short title of at most "
    "eight words. Answer with the title only.\n\n{text}"
)
# Per-segment custom questions: the answer's times must be relative to the clip.
QUESTION_TIMES = " If you mention times, give them in seconds from the start of this audio."

PROMPTS = {
    "transcribe": TRANSCRIBE,
    "caption": CAPTION,
    "events": EVENTS,
    "summarize": SUMMARIZE,
    "think": THINK_QUESTION,
}

# AF3's ASR answers are framed ("The spoken content of the audio is \"...\"."); transformers'
# processor strips these framings when decoding a transcription.
_TRANSCRIPT_FRAMES = (
    "The spoken content of the audio is",
    "The transcription of the audio is",
    "The content of the input audio is",
)


def strip_transcript(text: str) -> str:
    """The words of an ASR answer without AF3's framing sentence and quotes."""
    words = text.strip()
    for frame in _TRANSCRIPT_FRAMES:
        if words.startswith(frame):
            words = words[len(frame) :].strip()
            break
    words = words.removesuffix(".").strip()
    if len(words) >= 2 and words[0] == words[-1] and words[0] in "\"'":
        words = words[1:-1].strip()
    return words


_TITLE_PREFIX = re.compile(r"^\s*(?:title|chapter(?:\s+\d+)?|part(?:\s+\d+)?)\s*[:\-–]\s*", re.IGNORECASE)


def clean_title(text: str, *, max_chars: int = 80) -> str:
    """The first non-empty line of a title answer, without 'Title:', quotes or markdown."""
    for line in text.splitlines():
        line = _TITLE_PREFIX.sub("", line.strip().lstrip("#*- ").strip())
        prev = None
        while prev != line:
            prev = line
            line = line.strip().strip("\"'`*_").strip().rstrip(".").strip()
        if line:
            if len(line) > max_chars:
                cut = line[:max_chars].rsplit(" ", 1)[0]
                line = (cut or line[:max_chars]).rstrip(",;:") + "…"
            return line
    return ""


_THINK_TAGS = re.compile(r"<think>(.*?)</think>(.*)", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>(.*)$", re.DOTALL | re.IGNORECASE)
_ANSWER_MARK = re.compile(
    r"^(.*?)(?:\n|^)\s*(?:\*\*)?(?:final answer|answer|conclusion)(?:\*\*)?\s*[:\-](?:\*\*)?\s*(.*)$",
    re.DOTALL | re.IGNORECASE,
)
_REASONING_LABEL = re.compile(r"^\s*(?:reasoning|thinking|thoughts?)\s*[:\-]\s*", re.IGNORECASE)
_PARAGRAPHS = re.compile(r"\n\s*\n")
# A sentence ends at . ! or ? followed by space; decimals ("12.5 s") do not end one.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def split_reasoning(text: str) -> tuple[str, str]:
    """(thought, answer) from AF3 thinking-mode output; never raises.

    AF-Think answers are a short thought followed by the answer, without tags. The answer
    is the last paragraph when there are several, else the last sentence; a one-sentence
    reply is all answer. Explicit "Answer:" markers and the ``<think>..</think>`` tags of
    later model families (a ``<think>`` cut off by the token limit is all thought) are
    honoured first.
    """
    m = _THINK_TAGS.search(text)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    m = _THINK_OPEN.search(text)
    if m:
        return m.group(1).strip(), ""
    m = _ANSWER_MARK.match(text)
    if m and m.group(1).strip():
        return _REASONING_LABEL.sub("", m.group(1).strip()), m.group(2).strip()
    body = text.strip()
    paragraphs = [p.strip() for p in _PARAGRAPHS.split(body) if p.strip()]
    if len(paragraphs) > 1:
        return "\n\n".join(paragraphs[:-1]), paragraphs[-1]
    sentences = _SENTENCE_END.split(body)
    if len(sentences) > 1:
        return " ".join(sentences[:-1]).strip(), sentences[-1].strip()
    return "", body
