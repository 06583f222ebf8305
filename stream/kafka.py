"""How every Kafka client of the project connects: plaintext locally, TLS and SASL
against a managed cluster (``SCORER_KAFKA_SECURITY_PROTOCOL`` and friends)."""

from __future__ import annotations

import ssl
from typing import Any

import faust

from stream.settings import StreamSettings


def _ssl_context(settings: StreamSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None)
    return context


def client_options(settings: StreamSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's producer, consumer and admin client."""
    protocol = settings.kafka_security_protocol.upper()
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def faust_credentials(settings: StreamSettings) -> Any:
    """The ``broker_credentials`` of the Faust app (None for plaintext)."""
    protocol = settings.kafka_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(settings))
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=_ssl_context(settings) if protocol == "SASL_SSL" else None,
    )


def faust_broker(settings: StreamSettings) -> str:
    """The broker URL of the Faust app: every bootstrap server, scheme kafka://."""
    return ";".join(f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(","))
