"""Is a pod ready? Ask its queue-proxy on the serving port, as Knative's activator does.

A request carrying PROBE_HEADER is answered by the queue-proxy itself: 200 once its app is ready, 503
before and while draining. A refused connection (nothing listens yet) or a slow answer is "not ready".
A fresh connection per probe keeps it independent of the request path's pooled connections.
"""

from __future__ import annotations

import asyncio

from kapa.core import contract
from kapa.core.services import Endpoint

#: Knative's aggressive probing timeout.
PROBE_TIMEOUT_S = 0.1

_REQUEST = (
    f"GET / HTTP/1.1\r\nHost: kapa-activator-probe\r\n{contract.PROBE_HEADER}: {contract.PROBE_HEADER_VALUE}\r\n"
    "User-Agent: kapa-activator\r\nConnection: close\r\n\r\n"
).encode()


async def probe(endpoint: Endpoint, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when the endpoint's queue-proxy answers the readiness probe with 200 within `timeout_s`."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            writer.write(_REQUEST)
            status_line = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
    parts = status_line.split(None, 2)
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1] == b"200"
