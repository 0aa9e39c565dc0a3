"""TLS and SASL for every icuwatch Kafka client, from the one settings object.

Two client libraries take the same settings in different shapes: kafka-python (producers, replay
and archive readers) wants keyword arguments, Faust (the worker, through aiokafka) a credentials
object. Both come from here so that a cluster that requires SASL_SSL is reached the same way by all.
"""

from __future__ import annotations

import ssl
from typing import Any

from icuwatch.core.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Server-verifying TLS (hostname checked) with the configured CA and optional client cert."""
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None
        )
    return context


def _sasl_login(settings: Settings) -> tuple[str, str]:
    if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
        raise ValueError(
            f"ICUWATCH_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs "
            "ICUWATCH_KAFKA_SASL_USERNAME and ICUWATCH_KAFKA_SASL_PASSWORD"
        )
    return settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``KafkaProducer`` / ``KafkaConsumer`` / ``KafkaAdminClient``."""
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        config["ssl_context"] = ssl_context(settings)
    if protocol.startswith("SASL_"):
        username, password = _sasl_login(settings)
        config.update(
            sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=username, sasl_plain_password=password
        )
    return config


def faust_credentials(settings: Settings):
    """``broker_credentials`` for the Faust app (None: PLAINTEXT)."""
    from faust.auth import SASLCredentials, SSLCredentials

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(ssl_context(settings))
    username, password = _sasl_login(settings)
    return SASLCredentials(
        username=username,
        password=password,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=ssl_context(settings) if protocol == "SASL_SSL" else None,
    )
