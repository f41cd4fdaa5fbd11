"""A free TCP port on the loopback interface, for the tests that start a gloo process group."""

import socket


def free_port():
    """A port the kernel reports free now (another process could take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
