"""The TikTok client's HTTP transport: certificates are verified on every endpoint but a
plain ``http://`` one (the sandbox), where no request uses TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl

import pytest

from processor.metrics import Metrics
from processor.sink.client import TikTokClient
from tests.unit.sinkkit import tiktok


def _verify_mode(endpoint: str) -> ssl.VerifyMode:
    client = TikTokClient(
        dataclasses.replace(tiktok(), endpoint=endpoint), Metrics(), timeout_s=1.0
    )
    try:
        # httpx keeps its transport's TLS settings on the connection pool.
        context: ssl.SSLContext = client._http._transport._pool._ssl_context  # type: ignore[attr-defined]
        return context.verify_mode
    finally:
        asyncio.run(client.aclose())


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://business-api.tiktok.com/open_api/v1.3/event/track/",
        "HTTPS://business-api.tiktok.com/open_api/v1.3/event/track/",
        "https://127.0.0.1:8443/open_api/v1.3/event/track/",
    ],
)
def test_an_https_endpoint_verifies_certificates(endpoint: str) -> None:
    assert _verify_mode(endpoint) == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:8080/open_api/v1.3/event/track/", "HTTP://localhost/track/"],
)
def test_a_plain_http_endpoint_loads_no_certificates(endpoint: str) -> None:
    assert _verify_mode(endpoint) == ssl.CERT_NONE
