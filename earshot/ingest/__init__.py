"""Event-driven ingest: S3 notifications (SQS, AMQP, webhook) become jobs, exactly once.

- ``events``: parse AWS / MinIO / SNS-wrapped S3 event messages;
- ``filters``: which keys become jobs (prefixes, suffixes, size, Earshot's own outputs);
- ``submit``: one object version -> one job, enqueued once (receipt row + row lock);
- ``bridge``: one message -> jobs and dead letters, and whether to ack;
- ``sources`` (SQS, AMQP) and ``webhook`` (HTTP, SNS): where messages come from;
- ``reconcile``: list a bucket, enqueue what has no job;
- ``deadletters``, ``models``.

Completion callbacks live in :mod:`earshot.callbacks` (API and CLI jobs use them too).

The deployable process is ``services/ingest`` (``earshot ingest run|scan``).
"""
