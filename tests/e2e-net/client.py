#!/usr/bin/env python3
"""Real Kafka clients for the e2e-net tier (confluent-kafka, librdkafka 2.x), run inside a client
host's network namespace with `ip netns exec`.

Subcommands (every one bounded in time; results as JSON on stdout, diagnostics on stderr):
    produce   --bootstrap B --topic T --count N --prefix P --out FILE
              produce N messages with keys P-0..P-(N-1); FILE gets one acknowledged key per line.
              Exit 0 only when all N were acknowledged.
    consume   --bootstrap B --topic T --expect FILE [--timeout S]
              read the topic from the beginning in a fresh consumer group until every key listed in
              FILE was seen. Prints {"expected", "seen", "missing": [...]}; exit 0 when none missing.
    producer  --bootstrap B --topic T --prefix P --acked FILE --stop FILE [--max-count N] [--max-seconds S]
              the producer that runs throughout a rollout: one message every --interval seconds, each
              acknowledged key appended (and flushed) to --acked; stops when the --stop file exists,
              after --max-count messages or --max-seconds, whichever is first. Prints counts of
              produced, acknowledged and failed deliveries.
    metadata  --bootstrap B [--timeout S]
              what the cluster advertises, as seen through B: {"brokers": [{"id", "host", "port"}]}.
              Exit 1 when no metadata arrived.

Every subcommand also takes -X KEY=VALUE (repeatable): a librdkafka property for every client it
makes, e.g. -X security.protocol=SSL -X ssl.ca.location=CA.pem. Client errors (error_cb) are logged
to stderr.

Settings for speed (TESTING.md): metadata.recovery.rebootstrap.trigger.ms=2000 (otherwise a client
waits up to 300 s on a broker it knows), session.timeout.ms=6000, heartbeat.interval.ms=1000.
"""

import argparse
import json
import os
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 3

# -X KEY=VALUE properties, for every client made.
EXTRA = {}


def common(bootstrap):
    return {
        "bootstrap.servers": bootstrap,
        "metadata.recovery.rebootstrap.trigger.ms": 2000,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 1000,
        "socket.connection.setup.timeout.ms": 5000,
        "topic.metadata.refresh.interval.ms": 5000,
        "error_cb": lambda error: log(f"client error: {error}"),
        **EXTRA,
    }


def log(message):
    print(f"client.py: {message}", file=sys.stderr, flush=True)


def property_arg(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def ensure_topic(bootstrap, topic, timeout=20.0):
    admin = AdminClient(common(bootstrap))
    deadline = time.monotonic() + timeout
    while True:
        future = admin.create_topics([NewTopic(topic, PARTITIONS, 1)], request_timeout=5)[topic]
        try:
            future.result(timeout=10)
            return
        except KafkaException as error:
            if error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            if time.monotonic() > deadline:
                raise
            log(f"create topic {topic}: {error}; retrying")
            time.sleep(0.5)


def producer_config(bootstrap):
    return {
        **common(bootstrap),
        "acks": "all",
        "enable.idempotence": False,
        "message.timeout.ms": 15000,
        "linger.ms": 5,
    }


def cmd_produce(args):
    ensure_topic(args.bootstrap, args.topic)
    producer = Producer(producer_config(args.bootstrap))
    acked, failed = [], []

    def delivered(error, message):
        if error is None:
            acked.append(message.key().decode())
        else:
            failed.append(f"{message.key().decode()}: {error}")

    for i in range(args.count):
        producer.produce(args.topic, key=f"{args.prefix}-{i}".encode(), value=f"message {i}".encode(), on_delivery=delivered)
        producer.poll(0)
    left = producer.flush(args.timeout)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.writelines(key + "\n" for key in acked)
    print(json.dumps({"produced": args.count, "acked": len(acked), "failed": failed[:10], "unflushed": left}))
    return 0 if len(acked) == args.count else 1


def cmd_consume(args):
    with open(args.expect, encoding="utf-8") as handle:
        expected = {line.strip() for line in handle if line.strip()}
    consumer = Consumer({
        **common(args.bootstrap),
        "group.id": f"e2e-check-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    })
    consumer.subscribe([args.topic])
    seen, errors = set(), []
    deadline = time.monotonic() + args.timeout
    try:
        while not expected <= seen and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                errors.append(str(message.error()))
                continue
            seen.add(message.key().decode())
        # Commit what was read: proves the group coordinator (FindCoordinator) is reachable too.
        committed = True
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as error:
            committed = str(error)
    finally:
        consumer.close()
    missing = sorted(expected - seen)
    print(json.dumps({
        "expected": len(expected), "seen": len(seen & expected), "missing": missing[:20],
        "missing_count": len(missing), "committed": committed, "errors": errors[:5],
    }))
    return 0 if not missing and committed is True else 1


def cmd_producer(args):
    ensure_topic(args.bootstrap, args.topic)
    producer = Producer(producer_config(args.bootstrap))
    counts = {"produced": 0, "acked": 0, "failed": 0}
    errors = []
    acked_file = open(args.acked, "a", encoding="utf-8")

    def delivered(error, message):
        if error is None:
            counts["acked"] += 1
            acked_file.write(message.key().decode() + "\n")
            acked_file.flush()
        else:
            counts["failed"] += 1
            if len(errors) < 10:
                errors.append(str(error))

    started = time.monotonic()
    ready = False
    while (
        not os.path.exists(args.stop)
        and counts["produced"] < args.max_count
        and time.monotonic() - started < args.max_seconds
    ):
        key = f"{args.prefix}-{counts['produced']}"
        try:
            producer.produce(args.topic, key=key.encode(), value=b"x", on_delivery=delivered)
            counts["produced"] += 1
        except BufferError:
            pass
        producer.poll(args.interval)
        if not ready and counts["acked"] > 0 and args.ready:
            open(args.ready, "w").close()
            ready = True
    producer.flush(20)
    acked_file.close()
    print(json.dumps({**counts, "errors": errors}))
    return 0


def cmd_metadata(args):
    admin = AdminClient(common(args.bootstrap))
    deadline = time.monotonic() + args.timeout
    last = None
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=max(1.0, min(5.0, deadline - time.monotonic())))
            brokers = [{"id": b.id, "host": b.host, "port": b.port} for b in metadata.brokers.values()]
            print(json.dumps({"brokers": sorted(brokers, key=lambda b: (b["id"], b["host"])),
                              "topics": sorted(metadata.topics)}))
            return 0
        except KafkaException as error:
            last = error
            time.sleep(0.3)
    log(f"no metadata through {args.bootstrap} within {args.timeout}s: {last}")
    return 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    produce = sub.add_parser("produce")
    produce.add_argument("--bootstrap", required=True)
    produce.add_argument("--topic", required=True)
    produce.add_argument("--count", type=int, required=True)
    produce.add_argument("--prefix", required=True)
    produce.add_argument("--out", required=True)
    produce.add_argument("--timeout", type=float, default=30.0)

    consume = sub.add_parser("consume")
    consume.add_argument("--bootstrap", required=True)
    consume.add_argument("--topic", required=True)
    consume.add_argument("--expect", required=True)
    consume.add_argument("--timeout", type=float, default=40.0)

    producer = sub.add_parser("producer")
    producer.add_argument("--bootstrap", required=True)
    producer.add_argument("--topic", required=True)
    producer.add_argument("--prefix", required=True)
    producer.add_argument("--acked", required=True)
    producer.add_argument("--stop", required=True)
    producer.add_argument("--ready", help="file created once the first message was acknowledged")
    producer.add_argument("--interval", type=float, default=0.02)
    producer.add_argument("--max-count", type=int, default=20000)
    producer.add_argument("--max-seconds", type=float, default=240.0)

    metadata = sub.add_parser("metadata")
    metadata.add_argument("--bootstrap", required=True)
    metadata.add_argument("--timeout", type=float, default=15.0)

    for subparser in (produce, consume, producer, metadata):
        subparser.add_argument("-X", dest="properties", action="append", type=property_arg, default=[],
                               metavar="KEY=VALUE", help="a librdkafka property for every client")

    args = parser.parse_args()
    EXTRA.update(args.properties)
    handler = {"produce": cmd_produce, "consume": cmd_consume, "producer": cmd_producer, "metadata": cmd_metadata}
    sys.exit(handler[args.command](args))


if __name__ == "__main__":
    main()
