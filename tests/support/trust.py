"""The test clients' one TLS trust store. httpx builds a fresh SSL context
for every client and transport, loading certifi's ~150 CA certificates each
time (about 25 ms): a test making 150 clients (one per source address) spent
most of its time there. Built once here and passed as ``verify=TRUST`` it is
the same context httpx would build, so clients trust exactly what they did."""
from __future__ import annotations

import httpx

TRUST = httpx.create_ssl_context()
