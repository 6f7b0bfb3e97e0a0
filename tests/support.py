"""Small helpers shared by test modules."""
import socket


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now (for msrun's master)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
