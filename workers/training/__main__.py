"""``python -m workers.training run --config ...``: the same CLI as ``earshot train``."""

from services.cli.train import main

main()
