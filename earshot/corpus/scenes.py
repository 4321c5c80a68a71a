"""One 30 s window: sentences with pauses, sound events at known times, background noise,
and the answers AF3 is asked for (transcript, events, caption, a question)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from earshot.corpus import sounds
from earshot.corpus.grammar import PROPER_CLASSES, Sentence, display, sample_sentence
from earshot.corpus.spec import CorpusSpec
from earshot.corpus.voices import SAMPLE_RATE, Voice, speak

ASR_PROMPT = "Transcribe the input speech."
ASR_ANSWER = 'The spoken content of the audio is "{text}".'
NUMBER_PROMPT = "Which number was said?"
# Written into every record: the real AF3 template adds this system turn when none is given,
# so an explicit one renders the same prompt under either template.
SYSTEM_PROMPT = "You are a helpful assistant."

# Caption phrases per event label, and the word that marks each label in a caption.
_PHRASE = {
    "siren": "a siren",
    "alarm": "an alarm",
    "knocking": "knocking",
    "noise burst": "a noise burst",
    "chime": "a chime",
}


@dataclass
class Utterance:
    start: float
    end: float
    text: str  # written form ("Anna moved the red box to the station.")
    number: str | None = None


@dataclass
class Event:
    start: float
    end: float
    label: str


@dataclass
class Scene:
    id: str
    kind: str
    voice: str | None
    duration: float
    utterances: list[Utterance] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    noise: str | None = None
    snr_db: float | None = None

    @property
    def transcript(self) -> str:
        return " ".join(u.text for u in self.utterances)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scene:
        return cls(
            **{
                **data,
                "utterances": [Utterance(**u) for u in data.get("utterances", [])],
                "events": [Event(**e) for e in data.get("events", [])],
            }
        )


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def pick_voice(rng: np.random.Generator, spec: CorpusSpec, which: str) -> Voice:
    names = spec.voices.seen if which == "seen" else spec.voices.heldout
    return Voice(
        name=str(rng.choice(names)),
        speed_wpm=int(rng.integers(spec.voices.speed_wpm[0], spec.voices.speed_wpm[1] + 1)),
        pitch=int(rng.integers(spec.voices.pitch[0], spec.voices.pitch[1] + 1)),
    )


def gender(voice_name: str | None) -> str:
    return "woman" if voice_name and "+f" in voice_name else "man"


def caption(scene: Scene) -> str:
    """One sentence naming who speaks and the sounds in time order."""
    phrases = [_PHRASE.get(e.label, e.label) for e in sorted(scene.events, key=lambda e: e.start)]
    joined = ", then ".join(phrases) if len(phrases) < 3 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if scene.utterances:
        text = f"A {gender(scene.voice)} speaks"
        return text + (f", with {joined}." if phrases else ".")
    return (joined[:1].upper() + joined[1:] + ".") if phrases else "Background noise."


def caption_labels(text: str) -> set[str]:
    """The event labels (and "speech") a caption names."""
    low = text.lower()
    found = {label for label in _PHRASE if label in low}
    if "speaks" in low or "speech" in low or "talks" in low:
        found.add("speech")
    return found


def events_answer(events: list[Event]) -> str:
    return "\n".join(
        f"[{e.start:.1f} - {e.end:.1f}] {e.label}" for e in sorted(events, key=lambda e: e.start)
    )


def _place_events(
    rng: np.random.Generator, spec: CorpusSpec, count: int, window_s: float
) -> list[tuple[float, float, str, str]]:
    placed: list[tuple[float, float, str, str]] = []
    for _ in range(count * 50):
        if len(placed) == count:
            break
        kind = spec.events[int(rng.integers(len(spec.events)))]
        length = _uniform(rng, kind.seconds)
        start = round(float(rng.uniform(0.3, window_s - length - 0.3)), 1)
        end = round(start + length, 1)
        if all(end + 0.5 < a or start > b + 0.5 for a, b, _, _ in placed):
            placed.append((start, end, kind.kind, kind.label))
    return sorted(placed)


def build_scene(
    rng: np.random.Generator,
    spec: CorpusSpec,
    *,
    scene_id: str,
    kind: str,
    voices: str,
    heldout_sentences: bool,
) -> tuple[Scene, np.ndarray]:
    """Synthesize one window and its ground truth."""
    sc = spec.scene
    total_n = int(sc.window_s * SAMPLE_RATE)
    speech = np.zeros(total_n, dtype=np.float32)
    scene = Scene(id=scene_id, kind=kind, voice=None, duration=sc.window_s)
    if kind in ("speech", "speech_events"):
        voice = pick_voice(rng, spec, voices)
        scene.voice = voice.name
        short = rng.random() < sc.short_speech_fraction
        target = _uniform(rng, sc.short_speech_s if short else sc.speech_s)
        t = _uniform(rng, sc.lead_s)
        first = True
        while True:
            sent: Sentence = sample_sentence(rng, spec, heldout=heldout_sentences)
            audio = speak(sent.text, voice)
            dur = len(audio) / SAMPLE_RATE
            if t + dur > sc.window_s - 0.2 or (not first and t + dur > sc.lead_s[0] + target + 2.0):
                break
            i = round(t * SAMPLE_RATE)
            speech[i : i + len(audio)] = audio
            scene.utterances.append(
                Utterance(
                    start=round(t, 2), end=round(t + dur, 2), text=display(sent.text), number=sent.number
                )
            )
            first = False
            t += dur + _uniform(rng, sc.pause_s)
            if t - sc.lead_s[1] >= target:
                break
    if kind == "words":
        voice = pick_voice(rng, spec, voices)
        scene.voice = voice.name
        t = _uniform(rng, sc.lead_s)
        count = int(rng.integers(sc.words_per_clip[0], sc.words_per_clip[1] + 1))
        for _ in range(count):
            cls = str(rng.choice(sorted(spec.words)))
            word = str(rng.choice(spec.words[cls]))
            audio = speak(word, voice)
            dur = len(audio) / SAMPLE_RATE
            if t + dur > sc.window_s - 0.2:
                break
            i = round(t * SAMPLE_RATE)
            speech[i : i + len(audio)] = audio
            text = word.capitalize() if cls in PROPER_CLASSES else word
            scene.utterances.append(
                Utterance(start=round(t, 2), end=round(t + dur, 2), text=display(text),
                          number=word if cls == "number" else None)
            )
            t += dur + _uniform(rng, sc.pause_s)
    if kind in ("speech", "speech_events", "words"):
        level = float(rng.uniform(0.2, 0.5))
        speech *= level / (np.max(np.abs(speech)) + 1e-9)
    mix = speech.copy()
    ref = sounds.rms(speech[speech != 0]) if scene.utterances else 0.1
    if kind in ("speech_events", "events"):
        count = int(rng.integers(sc.events_per_clip[0], sc.events_per_clip[1] + 1))
        for start, end, ev_kind, label in _place_events(rng, spec, count, sc.window_s):
            x = sounds.event(ev_kind, end - start, rng)
            gain_db = _uniform(rng, sc.event_gain_db) if scene.utterances else float(rng.uniform(-6, 6))
            x *= ref * 10 ** (gain_db / 20) / (sounds.rms(x) + 1e-9)
            i = round(start * SAMPLE_RATE)
            mix[i : i + len(x)] += x[: total_n - i]
            scene.events.append(Event(start=start, end=end, label=label))
    if rng.random() >= spec.noise.clean_fraction:
        scene.noise = str(rng.choice(spec.noise.kinds))
        scene.snr_db = round(_uniform(rng, spec.noise.snr_db), 1)
        mix += sounds.noise(scene.noise, total_n, rng) * ref * 10 ** (-scene.snr_db / 20)
    peak = float(np.max(np.abs(mix)))
    if peak > 0.95:
        mix *= 0.95 / peak
    if sc.trim_speech and kind in ("speech", "words") and scene.utterances:
        end = scene.utterances[-1].end + _uniform(rng, sc.lead_s)
        mix = mix[: min(total_n, round(end * SAMPLE_RATE))]
        scene.duration = round(len(mix) / SAMPLE_RATE, 2)
    return scene, mix.astype(np.float32)


def conversation(
    scene: Scene, rng: np.random.Generator, *, caption_prompt: str, events_prompt: str
) -> list[tuple[str, str]]:
    """Every question this window can answer, in random order (the first turn is always a
    single-turn prompt as inference sends it; later turns add supervision for free, since the
    encoder's cost is paid once per window)."""
    qa: list[tuple[str, str]] = []
    if scene.utterances:
        qa.append((ASR_PROMPT, ASR_ANSWER.format(text=scene.transcript)))
        numbers = [u.number for u in scene.utterances if u.number]
        if len(numbers) == 1:
            qa.append((NUMBER_PROMPT, numbers[0].capitalize() + "."))
    if scene.events or not scene.utterances:
        qa.append((events_prompt, events_answer(scene.events) or "No sound events."))
    qa.append((caption_prompt, caption(scene)))
    order = rng.permutation(len(qa))
    turns: list[tuple[str, str]] = [("system", SYSTEM_PROMPT)]
    for k, j in enumerate(order):
        q, a = qa[int(j)]
        turns.append(("human", ("<sound>" if k == 0 else "") + q))
        turns.append(("gpt", a))
    return turns
