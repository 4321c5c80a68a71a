"""Fine-tuning deployable: a thin entry point over earshot.training (logic lives there)."""
