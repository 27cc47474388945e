"""Small helpers of the tracking tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A local port nothing listens on (the OS just handed it out and it was closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
