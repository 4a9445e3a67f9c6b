"""Where the gateway's files are, apart from any code that needs the generated stubs: gateway/codegen.py
runs before they exist and names its outputs from here."""

from __future__ import annotations

from pathlib import Path

GATEWAY_DIR = Path(__file__).resolve().parent
ROOT = GATEWAY_DIR.parent
# Envoy's descriptor set and the OpenAPI document the edge serves (made by `make proto`).
DESCRIPTOR = ROOT / "build" / "batchgate.pb"
OPENAPI = ROOT / "build" / "openapi.json"
