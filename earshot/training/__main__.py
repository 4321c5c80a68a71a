"""``python -m earshot.training run --config ...`` (e.g. ``torchrun -m earshot.training ...``)."""

from earshot.training.cli import main

main()
