"""One HTTP/2 stream sent frame by frame (the `h2` package over a plain socket), for what gRPC and
HTTP clients never send: a gRPC message whose length prefix lies, a stream without a message, REST
over h2c with its trailers visible. Every wait is bounded."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


def grpc_frame(message: bytes, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message; `length` overrides the prefix (to lie about it)."""
    return b"\x00" + struct.pack(">I", len(message) if length is None else length) + message


@dataclass
class H2Answer:
    headers: dict[str, str] | None = None
    data: bytes = b""
    trailers: dict[str, str] | None = None
    reset: int | None = None
    ended: bool = False
    seconds: float = 0.0
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def grpc_status(self) -> str | None:
        """grpc-status from the trailers, or from the headers of a trailers-only answer."""
        for block in (self.trailers, self.headers):
            if block and "grpc-status" in block:
                return block["grpc-status"]
        return None

    @property
    def grpc_message(self) -> str | None:
        for block in (self.trailers, self.headers):
            if block and "grpc-status" in block:
                return block.get("grpc-message", "")
        return None


def h2_call(
    port: int,
    path: str,
    headers: list[tuple[str, str]],
    data: bytes = b"",
    *,
    end_stream: bool = True,
    wait: float = 5.0,
) -> H2Answer:
    """POSTs `data` on one stream (END_STREAM with it unless told otherwise) and reads until the
    stream ends, is reset, or `wait` seconds pass (then `ended` is False)."""
    answer = H2Answer()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.settimeout(0.2)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        request = [(":method", "POST"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", path), *headers]
        conn.send_headers(stream, request, end_stream=False)
        conn.send_data(stream, data, end_stream=end_stream)
        sock.sendall(conn.data_to_send())
        while not answer.ended and answer.reset is None and time.monotonic() - started < wait:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    answer.raw_headers = list(event.headers)
                    answer.headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    answer.data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived):
                    answer.trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    answer.ended = True
                elif isinstance(event, h2.events.StreamReset):
                    answer.reset = event.error_code
                elif isinstance(event, h2.events.ConnectionTerminated):
                    answer.reset = event.error_code
            sock.sendall(conn.data_to_send())
    answer.seconds = time.monotonic() - started
    return answer


@dataclass
class StreamOutcome:
    """How one stream of a flood ended so far: its gRPC status (trailers, or a trailers-only
    answer), its HTTP status, a reset, or nothing yet (`open`)."""

    status: str | None = None
    grpc_status: str | None = None
    reset: int | None = None
    ended: bool = False

    @property
    def open(self) -> bool:
        return not self.ended and self.reset is None


class Flood:
    """`count` streams opened at once on as few HTTP/2 connections as the server's stream limit
    allows (it says so in its SETTINGS), from `source` (another loopback address is another caller).
    Each stream sends its headers and `data`, and ends its side only with `end_stream`: a stalled
    request holds its stream open. `read` tallies what came back; `close` drops the connections
    (the server sees every open stream go away)."""

    def __init__(
        self,
        port: int,
        count: int,
        path: str,
        headers: list[tuple[str, str]],
        data: bytes,
        *,
        end_stream: bool,
        source: str = "127.0.0.2",
    ) -> None:
        self.streams: dict[tuple[int, int], StreamOutcome] = {}
        self._conns: list[tuple[socket.socket, h2.connection.H2Connection]] = []
        request = [(":method", "POST"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", path), *headers]
        while len(self.streams) < count:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
            sock.settimeout(0.02)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            index = len(self._conns)
            self._conns.append((sock, conn))
            end = time.monotonic() + 2.0
            while not self._pump(index) and time.monotonic() < end:
                pass  # until the server's SETTINGS (its stream limit) arrived
            room = min(conn.remote_settings.max_concurrent_streams, count - len(self.streams))
            for _ in range(room):
                stream = conn.get_next_available_stream_id()
                conn.send_headers(stream, request, end_stream=False)
                conn.send_data(stream, data, end_stream=end_stream)
                self.streams[(index, stream)] = StreamOutcome()
                sock.sendall(conn.data_to_send())

    def _pump(self, index: int) -> bool:
        """Reads what one connection has (briefly); whether the server's SETTINGS were among it."""
        sock, conn = self._conns[index]
        try:
            chunk = sock.recv(1 << 20)
        except (TimeoutError, OSError):
            return False
        settings = False
        for event in conn.receive_data(chunk) if chunk else ():
            settings = settings or isinstance(event, h2.events.RemoteSettingsChanged)
            stream = getattr(event, "stream_id", None)
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            outcome = self.streams.get((index, stream)) if stream is not None else None
            if outcome is None:
                continue
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                fields = dict(event.headers)
                outcome.status = fields.get(":status", outcome.status)
                outcome.grpc_status = fields.get("grpc-status", outcome.grpc_status)
            elif isinstance(event, h2.events.StreamEnded):
                outcome.ended = True
            elif isinstance(event, h2.events.StreamReset):
                outcome.reset = event.error_code
        try:
            sock.sendall(conn.data_to_send())
        except OSError:
            pass
        return settings

    def read(self, seconds: float) -> dict[str, int]:
        """Reads whatever arrives for `seconds`; counts of stream outcomes by kind so far:
        `grpc-<code>`, `http-<status>`, `reset` or `open`."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for index in range(len(self._conns)):
                self._pump(index)
        counts: dict[str, int] = {}
        for outcome in self.streams.values():
            if outcome.grpc_status is not None:
                kind = f"grpc-{outcome.grpc_status}"
            elif outcome.reset is not None:
                kind = "reset"
            elif outcome.ended:
                kind = f"http-{outcome.status}"
            else:
                kind = "open"
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def close(self) -> None:
        for sock, _ in self._conns:
            sock.close()
        self._conns.clear()

    def __enter__(self) -> Flood:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
