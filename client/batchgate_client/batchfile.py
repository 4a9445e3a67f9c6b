"""Reads the list of batches for `batchgate cancel --from FILE`.

Two formats, told apart line by line so a file may be either: CSV lines and JSON lines
`{"id": ..., "provider": ...}`. CSV lines are `provider,id` unless a header row says otherwise: a
row naming the columns, `id,provider` or `provider,id` (any case), sets the order of the CSV lines
after it and is never sent as a batch; a header `id` alone means lines holding an id alone (they
take `--provider`), as does a line with one field in any file. Blank lines and lines starting with
`#` are skipped. A bad line stops everything before any call is made, with its line number.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable

from batchgate_client.models import BatchRef

COLUMNS = ("id", "provider")
DEFAULT_ORDER = ("provider", "id")


class BatchFileError(ValueError):
    """A line that is not a batch to cancel; the message names the source and line."""


def read_batches(lines: Iterable[str], source: str, default_provider: str | None = None) -> list[BatchRef]:
    refs: list[BatchRef] = []
    order: tuple[str, ...] = DEFAULT_ORDER
    for number, line in enumerate(lines, 1):
        text = line.strip().lstrip("\ufeff")
        if not text or text.startswith("#"):
            continue
        where = f"{source}:{number}"
        if text.startswith("{"):
            refs.append(_json_line(text, where))
            continue
        fields = _csv_fields(text, where)
        header = _header(fields)
        if header is not None:
            order = header
            continue
        refs.append(_csv_ref(fields, order, where, default_provider))
    return refs


def _json_line(text: str, where: str) -> BatchRef:
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BatchFileError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise BatchFileError(f"{where}: expected a JSON object with id and provider")
    fields = {}
    for name in COLUMNS:
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            raise BatchFileError(f"{where}: {name} must be a non-empty string")
        fields[name] = value
    return BatchRef(fields["id"], fields["provider"].strip())


def _csv_fields(text: str, where: str) -> list[str]:
    try:
        return [field.strip() for field in next(csv.reader([text], skipinitialspace=True))]
    except csv.Error as exc:
        raise BatchFileError(f"{where}: not a CSV line ({exc})") from None


def _header(fields: list[str]) -> tuple[str, ...] | None:
    """The column order a header row names (`id,provider`, `provider,id` or `id`), else None."""
    names = tuple(field.lower() for field in fields)
    if names in (("id", "provider"), ("provider", "id"), ("id",)):
        return names
    return None


def _csv_ref(fields: list[str], order: tuple[str, ...], where: str, default_provider: str | None) -> BatchRef:
    expected = ",".join(order)
    if len(fields) == 1 and default_provider:
        return _ref(fields[0], default_provider, where, expected)
    if len(order) == 1:
        if len(fields) == 1:
            raise BatchFileError(f"{where}: a line with an id alone needs --provider")
        raise BatchFileError(f"{where}: expected an id alone (the header names one column: id)")
    if len(fields) != 2:
        hint = " (or give --provider for lines with an id alone)" if len(fields) == 1 else ""
        raise BatchFileError(f"{where}: expected {expected}{hint}")
    row = dict(zip(order, fields, strict=True))
    return _ref(row["id"], row["provider"], where, expected)


def _ref(batch_id: str, provider: str, where: str, expected: str) -> BatchRef:
    if not batch_id or not provider:
        raise BatchFileError(f"{where}: expected {expected}")
    return BatchRef(batch_id, provider)
