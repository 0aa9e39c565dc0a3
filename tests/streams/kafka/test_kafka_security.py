"""TLS/SASL settings reach both Kafka client libraries (kafka-python and Faust/aiokafka) the same
way, from ``ICUWATCH_KAFKA_*`` environment variables, and the password never shows in a repr."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import AuthProtocol

from icuwatch.core.settings import Settings
from icuwatch.streams.kafka.security import faust_credentials, kafka_python_config


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    """A self-signed certificate standing in for the cluster's CA bundle."""
    d = tmp_path_factory.mktemp("ca")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "ca.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=kafka-1.kafka",
        ],
        check=True,
        capture_output=True,
    )
    return d / "ca.pem"


def test_plaintext_by_default():
    s = Settings()
    assert kafka_python_config(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None


def test_sasl_ssl_from_the_environment(monkeypatch, ca):
    monkeypatch.setenv("ICUWATCH_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ICUWATCH_KAFKA_SASL_USERNAME", "icuwatch")
    monkeypatch.setenv("ICUWATCH_KAFKA_SASL_PASSWORD", "s3cret-from-the-secret-store")
    monkeypatch.setenv("ICUWATCH_KAFKA_SSL_CAFILE", str(ca))
    s = Settings()
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())

    config = kafka_python_config(s)
    assert config["security_protocol"] == "SASL_SSL" and config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == (
        "icuwatch",
        "s3cret-from-the-secret-store",
    )
    context = config["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(c["subject"] == ((("commonName", "kafka-1.kafka"),),) for c in context.get_ca_certs())

    creds = faust_credentials(s)
    assert isinstance(creds, SASLCredentials)
    assert creds.protocol == AuthProtocol.SASL_SSL and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.username == "icuwatch" and creds.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_ssl_only_and_sasl_plaintext(ca):
    s = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=ca)
    assert isinstance(faust_credentials(s), SSLCredentials)
    assert "sasl_mechanism" not in kafka_python_config(s)
    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
    )
    assert faust_credentials(s).protocol == AuthProtocol.SASL_PLAINTEXT
    assert "ssl_context" not in kafka_python_config(s)


def test_sasl_without_credentials_is_a_clear_error():
    s = Settings(kafka_security_protocol="SASL_SSL")
    for build in (kafka_python_config, faust_credentials):
        with pytest.raises(ValueError, match="ICUWATCH_KAFKA_SASL_USERNAME and ICUWATCH_KAFKA_SASL_PASSWORD"):
            build(s)
    with pytest.raises(ValueError):
        Settings(kafka_security_protocol="TLS")
