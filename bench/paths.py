"""The paths under test, and the checks that they answer correctly before anything is timed.

    baseline     POST {sim}/openai/v1/batches/bench1/cancel      HTTP/1.1, straight to the simulator
    rest_envoy   POST {envoy}/v1/batches/bench1/cancel?provider=openai   HTTP/1.1, transcoded by Envoy
    grpc_direct  /batchgate.v1.BatchService/Cancel on the service port    h2c
    grpc_envoy   /batchgate.v1.BatchService/Cancel on Envoy's port        h2c, passed through
    grpc_floor   reference: bench/floor.py, a trivial grpc.aio servicer that answers a fixed batch
                 without any upstream call: the cost of grpc.aio itself (no overhead column)
    grpc_floor_upstream
                 reference: the same after one aiohttp POST to the simulator (no batchgate code)
    rest_floor, rest_floor_upstream
                 reference: REST through an Envoy with the gateway's config to each of those two

and REST via Envoy with `x-bf-vk` for the cost of a virtual-key rate limit (bench/limit_cost.py):
rest_vk_open, rest_vk_embedded, and on the Redis gateway rest_vk_open_redis, rest_vk_redis.
"""

from __future__ import annotations

import json
import struct
import time

from bench.common import BATCH_ID, GRPC_METHOD, HarnessError
from bench.load import LoadClient, Target
from bench.system import VK_LIMITED, VK_OPEN, System, http


def grpc_frame(provider: str) -> bytes:
    from service.gen.batchgate.v1 import batchgate_pb2 as pb

    message = pb.CancelBatchRequest(batch_id=BATCH_ID, provider=provider).SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def targets(system: System, *, bad: bool = False) -> list[Target]:
    """The four paths; with `bad`, requests each path must answer with an error (detector self-test)."""
    from sandbox.openai import OpenAISim

    key = "sk-wrong-key-for-bench" if bad else OpenAISim.default_key
    provider = "nope" if bad else "openai"
    json_headers = {"content-type": "application/json"}
    # A caller's own request id, as a production gRPC client sends one: the service then sends no
    # initial metadata of its own, so an error is a trailers-only answer whose grpc-status h2load
    # prints (it prints no trailers) and grpc_errors_in_verbose can count.
    grpc_headers = {"content-type": "application/grpc", "te": "trailers", "x-request-id": "bench-grpc"}
    out = [
        Target(
            "baseline",
            "baseline: simulator direct (HTTP/1.1)",
            f"{system.sim_url}/openai/v1/batches/{BATCH_ID}/cancel",
            False,
            {**json_headers, "authorization": f"Bearer {key}"},
            b"{}",
        ),
        Target(
            "rest_envoy",
            "REST via Envoy (HTTP/1.1)",
            f"{system.envoy_url}/v1/batches/{BATCH_ID}/cancel?provider={provider}",
            False,
            json_headers,
            b"{}",
        ),
        Target(
            "rest_vk_open",
            "REST via Envoy, virtual key without a limit",
            f"{system.envoy_url}/v1/batches/{BATCH_ID}/cancel?provider={provider}",
            False,
            {**json_headers, "x-bf-vk": VK_OPEN},
            b"{}",
        ),
        Target(
            "rest_vk_embedded",
            "REST via Envoy, limited virtual key, embedded store",
            f"{system.envoy_url}/v1/batches/{BATCH_ID}/cancel?provider={provider}",
            False,
            {**json_headers, "x-bf-vk": VK_LIMITED},
            b"{}",
        ),
        Target(
            "grpc_direct",
            "gRPC direct to service (h2c)",
            f"{system.grpc_url}{GRPC_METHOD}",
            True,
            grpc_headers,
            grpc_frame(provider),
        ),
        Target(
            "grpc_envoy",
            "gRPC via Envoy (h2c)",
            f"{system.envoy_url}{GRPC_METHOD}",
            True,
            grpc_headers,
            grpc_frame(provider),
        ),
    ]
    if system.redis_stack is not None:
        out.append(
            Target(
                "rest_vk_open_redis",
                "REST via Envoy (Redis gateway), virtual key without a limit",
                f"{system.redis_stack.http_url}/v1/batches/{BATCH_ID}/cancel?provider={provider}",
                False,
                {**json_headers, "x-bf-vk": VK_OPEN},
                b"{}",
            )
        )
        out.append(
            Target(
                "rest_vk_redis",
                "REST via Envoy (Redis gateway), limited virtual key, Redis store",
                f"{system.redis_stack.http_url}/v1/batches/{BATCH_ID}/cancel?provider={provider}",
                False,
                {**json_headers, "x-bf-vk": VK_LIMITED},
                b"{}",
            )
        )
    if system.floor_port and not bad:  # the floor answers everything with success
        out.append(
            Target(
                "grpc_floor",
                "reference: trivial grpc.aio servicer, no upstream (h2c)",
                f"http://127.0.0.1:{system.floor_port}{GRPC_METHOD}",
                True,
                grpc_headers,
                grpc_frame(provider),
            )
        )
    if system.floor_upstream_port and not bad:
        out.append(
            Target(
                "grpc_floor_upstream",
                "reference: grpc.aio servicer + one aiohttp call to the simulator, no batchgate code (h2c)",
                f"http://127.0.0.1:{system.floor_upstream_port}{GRPC_METHOD}",
                True,
                grpc_headers,
                grpc_frame(provider),
            )
        )
    for name, label in (
        ("rest_floor", "reference: REST via Envoy to the trivial grpc.aio servicer (HTTP/1.1)"),
        ("rest_floor_upstream", "reference: REST via Envoy to the servicer + one aiohttp call (HTTP/1.1)"),
    ):
        if name in system.floor_edges and not bad:
            url = f"{system.floor_edges[name][1]}/v1/batches/{BATCH_ID}/cancel?provider={provider}"
            out.append(Target(name, label, url, False, json_headers, b"{}"))
    return out


def wait_until_sane(system: System, timeout: float = 20.0) -> None:
    """Retries the sanity check until it passes: Envoy may route only after its first health check."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sanity_check(system)
            return
        except Exception as err:  # noqa: BLE001 - any failure is retried until the deadline
            if time.monotonic() > deadline:
                raise HarnessError(f"the paths did not answer correctly within {timeout:g} s: {err}") from None
            time.sleep(0.2)


def sanity_check(system: System) -> None:
    """One call per path with ordinary clients: each must answer `cancelling` for bench1."""
    import grpc

    from service.gen.batchgate.v1 import batchgate_pb2 as pb
    from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc

    for target in [t for t in targets(system) if not t.grpc]:
        status, body = http("POST", target.url, target.body, target.headers)
        data = json.loads(body) if body.startswith(b"{") else {}
        if status != 200 or data.get("status") != "cancelling":
            raise HarnessError(f"{target.name}: expected 200 cancelling, got {status} {body[:300]!r}")
    for port in (system.stack.grpc_port, system.stack.http_port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = pb_grpc.BatchServiceStub(channel).Cancel(
                pb.CancelBatchRequest(batch_id=BATCH_ID, provider="openai"), timeout=10
            )
        if answer.status != "cancelling" or answer.id != BATCH_ID:
            raise HarnessError(f"gRPC on port {port}: unexpected answer {answer}")


def detector_self_test(system: System, client: LoadClient) -> None:
    """Known-bad requests on every path must all be counted as errors, else error counts lie."""
    for target in targets(system, bad=True):
        result = client.run(target, 1, 3)
        if result.errors != 3:
            raise HarnessError(f"error detection is broken on {target.name}: 3 bad requests, {result.errors} counted")
