"""TCP ports of the local Kafka on 127.0.0.1: handing out free ones, probing who listens.

`free_port()` draws listener ports for brokers, controllers and other test servers, never the
same one twice in a process; `port_is_free` and `port_accepts` probe a port the way the broker
binds it and the way a client connects to it.
"""

from __future__ import annotations

import random
import socket

from devkit.kafka.errors import KafkaDevError

HOST = "127.0.0.1"

# Random listener ports are drawn below Linux's ephemeral range (32768-60999 by default): a node
# restarted after `kill -9` must get its old port back, and a port from the ephemeral range may
# meanwhile have become the source port of some client connection.
_PORT_RANGE = (20000, 32000)
_allocated_ports: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on and this process has not handed out."""
    for _ in range(500):
        port = random.randint(*_PORT_RANGE)
        if port not in _allocated_ports and port_is_free(port):
            _allocated_ports.add(port)
            return port
    raise KafkaDevError(f"found no free TCP port on {HOST} in {_PORT_RANGE}")


def port_is_free(port: int) -> bool:
    """Whether a server could bind `port` on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Java binds server sockets with SO_REUSEADDR, so a port that only has connections in
        # TIME_WAIT (a node just killed) is usable by the broker: test it the same way.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on `port` of 127.0.0.1 (within 0.5 s)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False
