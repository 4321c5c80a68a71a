"""Source URLs (no network: the queue-URL form of sqs:// needs no lookup)."""

from __future__ import annotations

import pytest

from earshot.config import Settings
from earshot.ingest.sources import SqsSource, _backoff_s, open_source


def test_sqs_queue_url_form() -> None:
    src = SqsSource("sqs://sqs.eu-west-1.amazonaws.com/123456789012/uploads?wait_s=5&batch=3", Settings(_env_file=None))  # type: ignore[call-arg]
    assert src.queue_url == "https://sqs.eu-west-1.amazonaws.com/123456789012/uploads"
    assert src.name == "sqs:uploads" and src.wait_s == 5 and src.batch == 3
    assert src.client.meta.region_name == "eu-west-1"
    src.close()


def test_unknown_scheme_is_refused_and_backoff_doubles_to_a_cap() -> None:
    with pytest.raises(ValueError):
        open_source("kafka://x", Settings(_env_file=None))  # type: ignore[call-arg]
    assert [_backoff_s(n) for n in (1, 2, 5, 20)] == [2, 4, 32, 300]
