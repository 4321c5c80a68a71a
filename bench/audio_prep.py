"""Benchmark the audio front end: decode + resample + segment plan, and its peak memory.

Not a test: it prints numbers. It generates speech-like MP3s (pauses at random spots,
written as a stream so even hours never sit in memory), then

1. times ``decode_stream -> segment_stream`` through Earshot in multiples of real time,
   next to ``ffmpeg -i in.mp3 -ar 16000 -ac 1 -f f32le -`` on the same file in the same
   run, and prints the ratio;
2. runs a three-hour file end to end through the segmenter (each segment also encoded
   to FLAC in memory, as the pipeline does) in a child process and reports its peak RSS.

    python bench/audio_prep.py [--hours 1] [--mem-hours 3] [--rates 44100,16000] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from earshot.audio import SAMPLE_RATE, decode_stream, probe, segment_stream, write_flac
from earshot.audio.synth import encode_file, speech_like_chunks


def pauses(duration_s: float, seed: int) -> list[tuple[float, float]]:
    """Pauses of 0.3-1.5 s every 3-15 s, like a talk or a meeting."""
    rng = np.random.default_rng(seed)
    spans, t = [], float(rng.uniform(3, 15))
    while t < duration_s:
        length = float(rng.uniform(0.3, 1.5))
        spans.append((t, min(t + length, duration_s)))
        t += length + float(rng.uniform(3, 15))
    return spans


def make_mp3(folder: Path, hours: float, rate: int) -> Path:
    duration = hours * 3600
    path = folder / f"speech_{rate}hz_{hours:g}h.mp3"
    if path.exists():
        print(f"  reusing {path.name}")
        return path
    started = time.perf_counter()
    chunks = speech_like_chunks(duration, pauses(duration, seed=rate), rate, chunk_s=60.0)
    encode_file(chunks, path, sample_rate=rate)
    elapsed = time.perf_counter() - started
    size_mb = path.stat().st_size / 1e6
    print(f"  generated {path.name}: {size_mb:.1f} MB in {elapsed:.1f} s")
    return path


def find_ffmpeg() -> str | None:
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_version(binary: str) -> str:
    out = subprocess.run([binary, "-version"], capture_output=True, text=True, check=False)
    first = out.stdout.splitlines()[0] if out.stdout else "unknown"
    return first.split(" Copyright")[0]


class Timing(NamedTuple):
    wall_s: float
    cpu_s: float
    samples: int
    segments: int


def time_earshot(path: Path, *, plan: bool) -> Timing:
    """One pass over ``path``: decode (and plan), counting output samples and segments."""
    started, cpu_started = time.perf_counter(), time.process_time()
    samples = 0
    segments = 0
    chunks = decode_stream(path)
    if plan:
        for segment in segment_stream(chunks):
            samples += segment.samples.shape[0]
            segments += 1
    else:
        for chunk in chunks:
            samples += chunk.shape[0]
    return Timing(
        time.perf_counter() - started, time.process_time() - cpu_started, samples, segments
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_ffmpeg(binary: str, path: Path) -> Timing:
    command = [binary, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path)]
    command += ["-ar", str(SAMPLE_RATE), "-ac", "1", "-f", "f32le", "-"]
    started, cpu_started = time.perf_counter(), _children_cpu_s()
    received = 0
    with subprocess.Popen(command, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        # Read the PCM like a consumer would; piping to /dev/null would flatter ffmpeg.
        while block := proc.stdout.read(1 << 20):
            received += len(block)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed with exit code {proc.returncode}")
    # The reading loop above costs this process CPU too, but that is the consumer's share.
    return Timing(time.perf_counter() - started, _children_cpu_s() - cpu_started, received // 4, 0)


def speed(path: Path, ffmpeg: str | None, repeat: int) -> None:
    duration = probe(path).duration_s or 0.0
    print(f"\n{path.name}: {duration / 60:.1f} min, {path.stat().st_size / 1e6:.1f} MB")
    path.read_bytes()  # into the page cache, so the first contender pays no disk read
    # Best of `repeat`, and CPU seconds next to wall seconds: the machine is shared, and
    # CPU time is what a worker pays whatever its neighbours do.
    decode = min((time_earshot(path, plan=False) for _ in range(repeat)), key=lambda t: t.cpu_s)
    full = min((time_earshot(path, plan=True) for _ in range(repeat)), key=lambda t: t.cpu_s)
    row = "  {:<36} {:>7.2f} s wall {:>7.2f} s CPU  {:>5.0f}x real time (CPU)"
    print(
        row.format("earshot decode+resample", decode.wall_s, decode.cpu_s, duration / decode.cpu_s)
    )
    print(
        row.format("earshot decode+resample+plan", full.wall_s, full.cpu_s, duration / full.cpu_s)
        + f"  {full.segments} segments"
    )
    if ffmpeg is None:
        print("  ffmpeg baseline unavailable: no `ffmpeg` on PATH and no imageio-ffmpeg.")
        print("  Install one: `apt-get install -y ffmpeg` or `pip install imageio-ffmpeg`.")
        return
    base = min((time_ffmpeg(ffmpeg, path) for _ in range(repeat)), key=lambda t: t.cpu_s)
    print(
        row.format(
            "ffmpeg -ar 16000 -ac 1 -f f32le -", base.wall_s, base.cpu_s, duration / base.cpu_s
        )
    )
    print(
        f"  earshot(decode+plan) / ffmpeg: {full.cpu_s / base.cpu_s:.2f}x the CPU time, "
        f"{full.wall_s / base.wall_s:.2f}x the wall time "
        f"(decode only: {decode.cpu_s / base.cpu_s:.2f}x CPU)"
    )
    print(f"  samples out: earshot {full.samples:,}, ffmpeg {base.samples:,}")


def _status_kib(field: str) -> int | None:
    """A ``VmXXX`` line of /proc/self/status in KiB (Linux only)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def child_memory(path: Path) -> None:
    """Runs in a fresh interpreter and prints its peak RSS as JSON.

    VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would report the parent's
    size at fork time; the high-water mark of the new address space starts from zero.
    """
    baseline_kb = _status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    cpu_started = time.process_time()
    segments, samples, flac_bytes, longest = 0, 0, 0, 0.0
    for segment in segment_stream(decode_stream(path)):
        buffer = io.BytesIO()
        write_flac(segment.samples, buffer)
        flac_bytes += buffer.getbuffer().nbytes
        segments += 1
        samples += segment.samples.shape[0]
        longest = max(longest, segment.duration_s)
    peak_kb = _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = {
        "baseline_kb": baseline_kb,
        "peak_kb": peak_kb,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "segments": segments,
        "samples": samples,
        "flac_bytes": flac_bytes,
        "longest_s": longest,
    }
    print(json.dumps(report))


def memory(path: Path) -> None:
    duration = probe(path).duration_s or 0.0
    out = subprocess.run(
        [sys.executable, __file__, "--child-memory", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    whole_mb = report["samples"] * 4 / 1e6
    print(f"\n{path.name}: {duration / 3600:.2f} h end to end (decode -> plan -> FLAC in memory)")
    print(
        f"  {report['seconds']:.1f} s wall, {report['cpu_seconds']:.1f} s CPU "
        f"({duration / report['cpu_seconds']:.0f}x real time per core), "
        f"{report['segments']} segments, longest {report['longest_s']:.1f} s, "
        f"FLAC {report['flac_bytes'] / 1e6:.1f} MB"
    )
    print(
        f"  peak RSS {report['peak_kb'] / 1024:.0f} MiB "
        f"(interpreter + imports before any audio: {report['baseline_kb'] / 1024:.0f} MiB); "
        f"the whole file decoded at once would be {whole_mb:.0f} MB of float32"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--hours", type=float, default=1.0, help="length of the speed-test file")
    parser.add_argument(
        "--mem-hours", type=float, default=3.0, help="length of the memory-test file"
    )
    parser.add_argument(
        "--rates", default="44100,16000", help="source sample rates, comma separated"
    )
    parser.add_argument("--repeat", type=int, default=2, help="timed runs each; best is shown")
    parser.add_argument("--workdir", type=Path, help="where files go (reused if present)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child-memory", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        child_memory(args.child_memory)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="earshot-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ffmpeg = find_ffmpeg()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, workdir {workdir}")
    print(f"baseline: {ffmpeg_version(ffmpeg) if ffmpeg else 'ffmpeg not found'}")
    try:
        rates = [int(r) for r in args.rates.split(",") if r]
        files = [make_mp3(workdir, args.hours, rate) for rate in rates]
        memory_file = make_mp3(workdir, args.mem_hours, SAMPLE_RATE)
        for path in files:
            speed(path, ffmpeg, max(1, args.repeat))
        memory(memory_file)
    finally:
        if args.keep or args.workdir:
            print(f"\nfiles kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
