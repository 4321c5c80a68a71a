"""One router per area: health, jobs, results, search, keys."""
