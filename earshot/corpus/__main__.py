"""`python -m earshot.corpus generate|init-model`: build the golden corpus and starting model."""

from __future__ import annotations

import argparse
import time

from earshot.corpus.generate import generate_split
from earshot.corpus.model import ModelSize, build_golden_init, parameter_count
from earshot.corpus.spec import DEFAULT_SPEC, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m earshot.corpus")
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="audio + truth + AF3 manifests for splits of the spec")
    gen.add_argument("--spec", default=str(DEFAULT_SPEC))
    gen.add_argument("--out", required=True)
    gen.add_argument("--split", action="append", required=True)
    gen.add_argument("--windows", type=int, default=None, help="override the split's window count")
    gen.add_argument("--workers", type=int, default=None)
    init = sub.add_parser("init-model", help="the untrained golden AF3 (sized) with the corpus tokenizer")
    init.add_argument("--spec", default=str(DEFAULT_SPEC))
    init.add_argument("--out", required=True)
    smp = sub.add_parser(
        "sample", help="consecutive windows of a split as one file + its known truth (.json)"
    )
    smp.add_argument("--spec", default=str(DEFAULT_SPEC))
    smp.add_argument("--split", default="demo")
    smp.add_argument("--windows", type=int, default=1)
    smp.add_argument("--first", type=int, default=0)
    smp.add_argument(
        "--kind", action="append", help="force window kinds in turn (speech, speech_events, events)"
    )
    smp.add_argument(
        "--out", required=True, help="audio path; the format follows the suffix (.flac, .wav, .mp3 ...)"
    )
    prep = sub.add_parser("prepare", help="every split of the spec and the untrained model under --out")
    prep.add_argument("--spec", default=str(DEFAULT_SPEC))
    prep.add_argument("--out", required=True)
    prep.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "generate":
        for split in args.split:
            t0 = time.monotonic()
            root = generate_split(
                split, args.out, spec_path=args.spec, windows=args.windows, workers=args.workers
            )
            print(f"{split}: {root} in {time.monotonic() - t0:.0f} s", flush=True)
    elif args.cmd == "sample":
        _sample(args)
    elif args.cmd == "init-model":
        _init(args.spec, args.out)
    else:
        spec = load_spec(args.spec)
        _init(args.spec, f"{args.out}/init")
        for split in spec.splits:
            t0 = time.monotonic()
            root = generate_split(split, f"{args.out}/corpus", spec_path=args.spec, workers=args.workers)
            print(f"{split}: {root} in {time.monotonic() - t0:.0f} s", flush=True)
    return 0


def _sample(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from earshot.audio.synth import encode_file
    from earshot.corpus.files import compose_file

    audio, truth = compose_file(
        load_spec(args.spec), args.split, windows=args.windows, first=args.first, kinds=args.kind
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    encode_file(audio, out)
    out.with_suffix(".json").write_text(json.dumps(truth.to_json(), indent=1) + "\n")
    print(f"{out}: {truth.duration:.1f} s, {len(truth.utterances)} sentences, {len(truth.events)} events")


def _init(spec_path: str, out: str) -> None:
    spec = load_spec(spec_path)
    m = spec.model
    size = ModelSize(
        hidden=m.hidden,
        layers=m.layers,
        heads=m.heads,
        encoder_hidden=m.encoder_hidden,
        encoder_layers=m.encoder_layers,
        ffn_mult=4,
        vocab_size=m.vocab_size,
    )
    path = build_golden_init(out, spec, size, seed=m.seed)
    print(f"{path}: {parameter_count(path) / 1e6:.2f} M parameters", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
