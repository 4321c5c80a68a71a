"""Completion callbacks: an outbox row written with the job's final status, then delivered.

- ``models``: the ``callback_deliveries`` table (the outbox);
- ``signing``: the HMAC-SHA256 signature receivers check (and the ingest webhook accepts);
- ``ssrf``: which URLs may be called, checked when the job is created and again at connect
  time against the resolved address (DNS rebinding);
- ``outbox``: record a callback in the job's final transaction, deliver it with retries.

API jobs, CLI jobs and ingested jobs all use it; the Celery task is
``earshot.deliver_callback`` and the sweeper (``earshot jobs reap``) resends what is pending.
"""
