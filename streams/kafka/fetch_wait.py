"""Set the Faust consumer's fetch wait: Faust hard-codes aiokafka's ``fetch_max_wait_ms``, which
bounds how long an idle partition's fetch holds back records of the others
(``Settings.consumer_fetch_max_wait_ms``)."""

from __future__ import annotations


def install(ms: int) -> None:
    from faust.transport.drivers import aiokafka as driver

    create = driver.AIOKafkaConsumerThread._create_worker_consumer

    def create_with_wait(self, transport):
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = create_with_wait  # type: ignore[method-assign]
