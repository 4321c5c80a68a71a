"""``python -m workers.training run --config ...``: the same CLI as ``earshot train``."""

from earshot.training.cli import main

main()
