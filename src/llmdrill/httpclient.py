"""httpx clients built without rebuilding a TLS context each time.

`httpx.Client()` loads the CA bundle into a new SSL context whenever it is built: 20-50 ms
on our machines, paid on the clock by every fault applied or reverted through an HTTP API
(Toxiproxy's, vllm-router's), which put the apply of a fault a tenth of a second behind its
phase. One context, built as httpx builds it (certifi's bundle, SSL_CERT_FILE and
SSL_CERT_DIR honoured), serves every client of the process.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def client(**options: Any) -> httpx.Client:
    """An httpx.Client with the process's shared TLS context (unless `verify` is given)."""
    options.setdefault("verify", tls_context())
    return httpx.Client(**options)


def request(method: str, url: str, **options: Any) -> httpx.Response:
    """One request, as httpx.request, on a client with the shared TLS context."""
    client_options = {key: options.pop(key) for key in ("timeout", "verify", "trust_env",
                                                         "follow_redirects") if key in options}
    with client(**client_options) as http:
        return http.request(method, url, **options)
