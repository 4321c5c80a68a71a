"""Jobs: creation (idempotent), state changes, result storage and reports."""
