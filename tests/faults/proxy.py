"""A small TCP proxy that loses answers on purpose.

Between a client and PostgreSQL it forwards bytes both ways, until it is armed with a
pattern: the next client message containing that pattern is forwarded, and the server's
answer to it is swallowed and the client's connection cut. The server has done the work
(an autocommit statement is committed before its answer is sent), the client only sees a
dropped connection: exactly an "unknown outcome".
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator


class LossyProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: bytes | None = None
        self.answers_lost = 0
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def arm(self, pattern: bytes) -> None:
        """Lose the answer to the next client message that contains ``pattern``."""
        with self._lock:
            self._armed = pattern

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._armed is not None

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            thread = threading.Thread(target=self._pipe, args=(client, server), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pipe(self, client: socket.socket, server: socket.socket) -> None:
        swallow = False
        with client, server:
            while not self._closed:
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        with self._lock:
                            if self._armed is not None and self._armed in data:
                                self._armed = None
                                swallow = True
                        server.sendall(data)
                    elif swallow:
                        # The server answered (and committed): the client never learns.
                        with self._lock:
                            self.answers_lost += 1
                        with contextlib.suppress(OSError):
                            client.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2
                            )
                        return
                    else:
                        client.sendall(data)


@contextlib.contextmanager
def lossy_proxy(upstream_port: int) -> Iterator[LossyProxy]:
    proxy = LossyProxy(upstream_port)
    try:
        yield proxy
    finally:
        proxy.close()
