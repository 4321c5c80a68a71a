"""Pull sources of S3 event messages: SQS and AMQP. (The push source, HTTP, is ``webhook``.)

URLs (``earshot ingest run --source URL``):

- ``sqs://QUEUE_NAME[?region=us-east-1&endpoint_url=http://host:port&wait_s=20&batch=10]``,
  or the queue URL without its scheme: ``sqs://sqs.eu-west-1.amazonaws.com/123456789012/NAME``.
  The endpoint defaults to ``EARSHOT_INGEST_SQS_ENDPOINT_URL``, else AWS; credentials come from
  boto3's usual chain (IRSA, env, profile).
- ``amqp://user:pass@host:5672/vhost?queue=NAME[&exchange=EX&exchange_type=direct&routing_key=RK&prefetch=10]``
  (also ``amqps://``). The queue is declared durable and, when ``exchange`` is given, bound
  to it -- that is where MinIO's AMQP target publishes bucket events.

A source hands out :class:`Received` items; the runner acks those the bridge accepted and
releases the others (SQS: the message becomes visible again after a backoff; AMQP: it is
requeued). Nothing is acked before the bridge said so.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import boto3
from botocore.config import Config

from earshot.config import Settings
from earshot.ingest.bridge import Delivery

__all__ = ["AmqpSource", "Received", "Source", "SqsSource", "open_source"]

log = logging.getLogger("earshot.ingest")


@dataclass
class Received:
    delivery: Delivery
    handle: Any  # the source's own token (receipt handle, kombu message)


class Source(Protocol):
    name: str

    def receive(self, max_wait_s: float) -> list[Received]: ...

    def ack(self, items: Sequence[Received]) -> None: ...

    def release(self, items: Sequence[Received]) -> None: ...

    def close(self) -> None: ...


def _query(url: str) -> tuple[Any, dict[str, str]]:
    parts = urlsplit(url)
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return parts, params


def _backoff_s(receive_count: int) -> int:
    return int(min(300, 2 ** min(receive_count, 9)))


# --------------------------------------------------------------------------- SQS


class SqsSource:
    def __init__(self, url: str, settings: Settings) -> None:
        parts, params = _query(url)
        queue_url: str | None = None
        region = params.get("region")
        if "." in parts.netloc and parts.path.strip("/"):
            # sqs://sqs.eu-west-1.amazonaws.com/123456789012/NAME: the queue URL itself
            queue_url = f"https://{parts.netloc}{parts.path}"
            host = parts.netloc.split(".")
            if not region and len(host) > 2 and host[0] == "sqs":
                region = host[1]
            queue = parts.path.rstrip("/").rsplit("/", 1)[-1]
        else:
            queue = (parts.netloc + parts.path).strip("/")
        if not queue:
            raise ValueError(f"{url!r}: no queue name (sqs://QUEUE_NAME)")
        self.name = f"sqs:{queue}"
        endpoint = params.get("endpoint_url") or settings.ingest_sqs_endpoint_url or None
        region = region or settings.s3_region
        self.wait_s = max(0, min(20, int(params.get("wait_s", "20"))))
        self.batch = max(1, min(10, int(params.get("batch", "10"))))
        self.visibility_s = int(params.get("visibility_s", str(settings.ingest_visibility_timeout_s)))
        config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=40)
        self.client = boto3.session.Session().client(
            "sqs", endpoint_url=endpoint, region_name=region, config=config
        )
        self.queue_url = queue_url or self.client.get_queue_url(QueueName=queue)["QueueUrl"]

    def receive(self, max_wait_s: float) -> list[Received]:
        response = self.client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch,
            WaitTimeSeconds=int(max(0, min(self.wait_s, max_wait_s))),
            VisibilityTimeout=self.visibility_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        out: list[Received] = []
        for msg in response.get("Messages", []):
            attrs = msg.get("Attributes", {})
            out.append(
                Received(
                    Delivery(
                        body=msg.get("Body", "").encode("utf-8"),
                        source=self.name,
                        message_id=msg.get("MessageId"),
                        receive_count=int(attrs.get("ApproximateReceiveCount", "1")),
                    ),
                    msg["ReceiptHandle"],
                )
            )
        return out

    def ack(self, items: Sequence[Received]) -> None:
        for start in range(0, len(items), 10):
            chunk = items[start : start + 10]
            response = self.client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r.handle} for i, r in enumerate(chunk)],
            )
            for failed in response.get("Failed", []):
                # the message will be delivered again; the bridge is idempotent
                log.warning("could not delete SQS message: %s", failed.get("Message"))

    def release(self, items: Sequence[Received]) -> None:
        for item in items:
            try:
                self.client.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=item.handle,
                    VisibilityTimeout=_backoff_s(item.delivery.receive_count),
                )
            except Exception as exc:  # it comes back after the visibility timeout anyway
                log.warning("could not change visibility of an SQS message: %s", exc)

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------- AMQP


class AmqpSource:
    _AMQP_PARAMS = ("queue", "exchange", "exchange_type", "routing_key", "prefetch")

    def __init__(self, url: str, settings: Settings) -> None:
        import kombu

        parts, params = _query(url)
        queue = params.get("queue")
        if not queue:
            raise ValueError(f"{url!r}: the queue is missing (amqp://.../vhost?queue=NAME)")
        self.name = f"amqp:{queue}"
        rest = {k: v for k, v in params.items() if k not in self._AMQP_PARAMS}
        self.broker_url = urlunsplit(parts._replace(query=urlencode(rest)))
        exchange_name = params.get("exchange")
        exchange = (
            kombu.Exchange(exchange_name, type=params.get("exchange_type", "direct"), durable=True)
            if exchange_name
            else None
        )
        self.queue = kombu.Queue(
            queue,
            exchange=exchange,
            routing_key=params.get("routing_key", queue if exchange is None else ""),
            durable=True,
        )
        self.prefetch = max(1, int(params.get("prefetch", "10")))
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._buffer: list[Any] = []
        self._connection: Any = None
        self._consumer: Any = None
        self._connect()

    def _connect(self) -> None:
        import kombu

        self._close_quietly()
        connection = kombu.Connection(self.broker_url, heartbeat=30)
        connection.ensure_connection(max_retries=10, interval_start=1, interval_step=2, interval_max=10)
        channel = connection.channel()
        consumer = kombu.Consumer(
            channel, queues=[self.queue], on_message=self._buffer.append, no_ack=False,
            prefetch_count=self.prefetch, auto_declare=True,
        )
        consumer.consume()
        self._connection, self._consumer = connection, consumer

    def _close_quietly(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:
                pass
        self._connection = self._consumer = None
        self._buffer.clear()

    def _receive_count(self, message: Any) -> int:
        headers = message.headers or {}
        if "x-delivery-count" in headers:  # quorum queues count for us
            return int(headers["x-delivery-count"]) + 1
        # classic queues only say "redelivered": count here (per process, bounded)
        digest = hashlib.sha256(message.body if isinstance(message.body, bytes) else b"").hexdigest()
        count = self._seen.pop(digest, 0) + 1
        self._seen[digest] = count
        while len(self._seen) > 10000:
            self._seen.popitem(last=False)
        redelivered = bool((message.delivery_info or {}).get("redelivered"))
        return max(count, 2 if redelivered else 1)

    def receive(self, max_wait_s: float) -> list[Received]:
        assert self._connection is not None
        try:
            deadline = time.monotonic() + max_wait_s
            while not self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    self._connection.drain_events(timeout=min(remaining, 1.0))
                except TimeoutError:
                    continue
            # take what else is already waiting, up to the prefetch window
            while len(self._buffer) < self.prefetch:
                try:
                    self._connection.drain_events(timeout=0.01)
                except TimeoutError:
                    break
        except (*self._connection.connection_errors, OSError) as exc:
            # unacked messages go back to the queue with the old connection
            log.warning("AMQP connection lost (%s); reconnecting", exc)
            self._connect()
            return []
        items = [
            Received(
                Delivery(
                    body=m.body if isinstance(m.body, bytes) else str(m.body).encode("utf-8"),
                    source=self.name,
                    message_id=_amqp_message_id(m),
                    receive_count=self._receive_count(m),
                ),
                m,
            )
            for m in self._buffer
        ]
        self._buffer.clear()
        return items

    def ack(self, items: Sequence[Received]) -> None:
        try:
            for item in items:
                item.handle.ack()
                self._forget(item)
        except Exception:
            self._connect()  # a broken channel: the broker requeues what was not acked
            raise

    def release(self, items: Sequence[Received]) -> None:
        if items:
            time.sleep(min(5.0, 0.5 * max(i.delivery.receive_count for i in items)))
        try:
            for item in items:
                item.handle.reject(requeue=True)
        except Exception:
            self._connect()
            raise

    def _forget(self, item: Received) -> None:
        self._seen.pop(hashlib.sha256(item.delivery.body).hexdigest(), None)

    def close(self) -> None:
        self._close_quietly()


def _amqp_message_id(message: Any) -> str | None:
    found = (message.properties or {}).get("message_id")
    if found:
        return str(found)
    tag = (message.delivery_info or {}).get("delivery_tag")
    return None if tag is None else f"tag-{tag}"


def open_source(url: str, settings: Settings) -> SqsSource | AmqpSource:
    scheme = urlsplit(url).scheme
    if scheme == "sqs":
        return SqsSource(url, settings)
    if scheme in ("amqp", "amqps", "pyamqp"):
        return AmqpSource(url, settings)
    raise ValueError(f"{url!r}: unsupported source (sqs://, amqp://, webhook://)")

