#!/bin/sh
# Retrain the golden model from nothing: corpus + untrained model from the spec's seeds, then the
# curriculum on the project's own runner, then copy the export to models/golden/.
# CPU: about an hour on two idle cores (nice it if the machine is shared). See docs/golden.md.
set -eu
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
$BIN/python -m earshot.corpus prepare --out .earshot/golden
$BIN/earshot train run --config examples/golden/curriculum.yaml --restart
rm -rf models/golden
cp -r .earshot/golden/runs/golden/think/model models/golden
$BIN/earshot eval run --model models/golden --out bench/results/golden_eval.json
