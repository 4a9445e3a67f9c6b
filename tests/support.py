"""Shared test helpers: configs pointing at the sandbox, and a running service over real gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import inspect
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from sandbox.core import ProviderSim
from service.config.file import Config
from service.edge.server import App, create_server
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc
from service.infra.providers.catalog import parse_config

OPENAI_KEYS = ("sk-test-openai-aaaaaaaa1111", "sk-test-openai-bbbbbbbb2222")
AZURE_KEY = "az-test-key-cccccccc3333"
SANDBOX_KEYS = {"openai": list(OPENAI_KEYS), "azure": [AZURE_KEY]}


class SteppedClock:
    """Time that moves only when the code under test sleeps (or a test moves it): pass the instance
    as the clock and its `sleep` as the sleep function."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0) -> None:
    """Waits until `predicate()` (sync or async) holds, checking every few milliseconds; fails after
    `timeout` seconds, which is headroom on a busy machine, not an expected duration. The one place
    integration tests wait for something to happen: they never sleep and hope."""
    deadline = time.monotonic() + timeout
    while True:
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"not reached within {timeout} s"
        await asyncio.sleep(0.005)


def in_flight() -> float:
    """Calls the service in this process is handling now (its batchgate_in_flight_requests gauge)."""
    return REGISTRY.get_sample_value("batchgate_in_flight_requests") or 0.0


async def settled(timeout: float = 10.0) -> None:
    """Waits until the service in this process handles no call. A call that has ended starts no
    upstream request any more: after this a test can check what it did not do, without sleeping
    and hoping that long enough has passed."""
    await eventually(lambda: in_flight() == 0, timeout)


def config_dict(sandbox_url: str, **client: Any) -> dict:
    """A config with one valid OpenAI key and one Azure key, both pointed at the sandbox."""
    return {
        "client": client,
        "providers": {
            "openai": {
                "keys": [{"name": "main", "value": OPENAI_KEYS[0], "use_for_batch_api": True}],
                "network_config": {"base_url": f"{sandbox_url}/openai", "max_retries": 0},
            },
            "azure": {
                "keys": [
                    {
                        "name": "main",
                        "value": AZURE_KEY,
                        "use_for_batch_api": True,
                        "azure_key_config": {"endpoint": f"{sandbox_url}/azure"},
                    }
                ],
                "network_config": {"max_retries": 0},
            },
        },
    }


def sim_config(
    sim_cls: type[ProviderSim],
    sandbox_url: str,
    key: str | None = None,
    *,
    max_retries: int = 0,
    network: Mapping[str, Any] | None = None,
    **provider_fields: Any,
) -> dict:
    """A config with one provider: the simulator's own block for the sandbox at `sandbox_url` (with
    `key`, else the simulator's default key), `max_retries` and `network` set in its network_config,
    and `provider_fields` laid over the block."""
    block = sim_cls.gateway_config(f"{sandbox_url}{sim_cls.prefix}", sim_cls.default_key if key is None else key)
    block.setdefault("network_config", {}).update({"max_retries": max_retries, **(network or {})})
    return {"providers": {sim_cls.name: {**block, **provider_fields}}}


def batch_keys(*values: str) -> list[dict]:
    """Plain batch keys named k0, k1, ... in the order given."""
    return [{"name": f"k{i}", "value": value, "use_for_batch_api": True} for i, value in enumerate(values)]


def error_detail(err: grpc.aio.AioRpcError) -> pb.ErrorDetail:
    """The ErrorDetail carried in a failed call's grpc-status-details-bin."""
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin on the error"
    detail = pb.ErrorDetail()
    assert status.details[0].Unpack(detail)
    return detail


async def cancel(stub, batch_id: str, provider: str = "openai", metadata=(), **fields) -> pb.BatchCancelResponse:
    return await stub.Cancel(pb.CancelBatchRequest(batch_id=batch_id, provider=provider, **fields), metadata=metadata)


async def cancel_error(stub, *args, **kwargs) -> grpc.aio.AioRpcError:
    """The error of a cancel that must fail (same arguments as `cancel`)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cancel(stub, *args, **kwargs)
    return info.value


async def cancel_failure(stub, *args, **kwargs) -> tuple[grpc.aio.AioRpcError, pb.ErrorDetail]:
    """`cancel_error` with the error's ErrorDetail."""
    err = await cancel_error(stub, *args, **kwargs)
    return err, error_detail(err)


@contextlib.asynccontextmanager
async def running_service(config: Config | dict) -> AsyncIterator[tuple[App, batchgate_pb2_grpc.BatchServiceStub]]:
    """A real grpc.aio server on an ephemeral loopback port and a stub talking to it."""
    if isinstance(config, dict):
        config = parse_config(config, env={})
    app = await create_server(config)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield app, batchgate_pb2_grpc.BatchServiceStub(channel)
    finally:
        await channel.close()
        await app.stop(grace=0)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway server certificate for localhost and 127.0.0.1 (its own CA), and its key, as PEM
    files in `directory`: (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def documented_version(raw: bytes) -> str:
    """A config file's version as the README defines it (the first 12 hex digits of the SHA-256 of
    the file), computed here rather than by the code under test."""
    return hashlib.sha256(raw).hexdigest()[:12]
