"""Free loopback ports for the many listeners of `kapa up` (four per replica)."""

from __future__ import annotations

import socket
from collections import deque

LOOPBACK = "127.0.0.1"


class PortAllocator:
    """Hands out ports the kernel just reported free, never the same one twice in a row of recent grants.

    A port is found free by binding port 0 and closing the socket; until the new owner binds it, the kernel
    could hand it out again, so the last few hundred grants are remembered and skipped.
    """

    def __init__(self, remember: int = 512) -> None:
        self._recent: deque[int] = deque(maxlen=remember)

    def allocate(self) -> int:
        while True:
            with socket.socket() as sock:
                sock.bind((LOOPBACK, 0))
                port = int(sock.getsockname()[1])
            if port not in self._recent:
                self._recent.append(port)
                return port
