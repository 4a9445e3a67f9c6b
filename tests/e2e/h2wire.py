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
