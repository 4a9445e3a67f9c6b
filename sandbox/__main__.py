"""`python -m sandbox [--host H] [--port P] [--auto-create] [--azure-quirks] [--keys-file F]
[--cancel-delay S] [--demo]`

Serves the provider sandbox, prints `SANDBOX_PORT=<port>` once listening and runs until SIGINT or
SIGTERM. The keys file is JSON `{provider: [key, ...]}` and replaces the default keys. `--demo`
seeds every provider with a realistic mix of batches (sandbox/seeding.py) to list and cancel.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Mapping
from pathlib import Path

import orjson

from sandbox.core import DEFAULT_CANCEL_DELAY_S, SIMULATOR_KEY
from sandbox.seeding import seed_demo
from sandbox.server import DEFAULT_KEYS, build_app, start


def load_keys(path: str | None, parser: argparse.ArgumentParser) -> Mapping[str, list[str]]:
    if path is None:
        return DEFAULT_KEYS
    try:
        keys = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        parser.error(f"cannot read keys file {path}: {exc}")
    valid = isinstance(keys, dict) and all(
        isinstance(values, list) and all(isinstance(key, str) for key in values) for values in keys.values()
    )
    if not valid:
        parser.error('the keys file must be a JSON object {"provider": ["key", ...]}')
    return keys


async def serve(args: argparse.Namespace, keys: Mapping[str, list[str]]) -> None:
    app = build_app(
        keys=keys, auto_create=args.auto_create, azure_quirks=args.azure_quirks, cancel_delay_s=args.cancel_delay
    )
    if args.demo:
        seed_demo(app[SIMULATOR_KEY])
    runner, port = await start(app, args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"SANDBOX_PORT={port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="batchgate provider sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--auto-create", action="store_true", help="unknown batch ids exist as in_progress")
    parser.add_argument("--azure-quirks", action="store_true", help="answer Azure like a preview build")
    parser.add_argument("--keys-file", help='JSON {"provider": ["key", ...]}')
    parser.add_argument(
        "--cancel-delay",
        type=float,
        default=DEFAULT_CANCEL_DELAY_S,
        metavar="SECONDS",
        help=f"how long a cancelled batch reads as cancelling (default {DEFAULT_CANCEL_DELAY_S})",
    )
    parser.add_argument("--demo", action="store_true", help="seed every provider with a mix of batches")
    args = parser.parse_args(argv)
    asyncio.run(serve(args, load_keys(args.keys_file, parser)))


if __name__ == "__main__":
    main()
