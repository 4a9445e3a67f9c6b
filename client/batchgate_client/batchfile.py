"""Reads the list of batches for `batchgate cancel --from FILE`.

Two formats, told apart line by line so a file may be either: CSV lines `provider,id` (a header
line `provider,id` is skipped; a line with an id alone takes `--provider`), or JSON lines
`{"id": ..., "provider": ...}`. Blank lines and lines starting with `#` are skipped. A bad line
stops everything before any call is made, with its line number.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable

from batchgate_client.client import BatchRef


class BatchFileError(ValueError):
    """A line that is not a batch to cancel; the message names the source and line."""


def read_batches(lines: Iterable[str], source: str, default_provider: str | None = None) -> list[BatchRef]:
    refs: list[BatchRef] = []
    for number, line in enumerate(lines, 1):
        text = line.strip().lstrip("\ufeff")
        if not text or text.startswith("#"):
            continue
        where = f"{source}:{number}"
        ref = _json_line(text, where) if text.startswith("{") else _csv_line(text, where, default_provider)
        if ref is not None:
            refs.append(ref)
    return refs


def _json_line(text: str, where: str) -> BatchRef:
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BatchFileError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise BatchFileError(f"{where}: expected a JSON object with id and provider")
    fields = {}
    for name in ("id", "provider"):
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            raise BatchFileError(f"{where}: {name} must be a non-empty string")
        fields[name] = value
    return BatchRef(fields["id"], fields["provider"].strip())


def _csv_line(text: str, where: str, default_provider: str | None) -> BatchRef | None:
    try:
        fields = [field.strip() for field in next(csv.reader([text], skipinitialspace=True))]
    except csv.Error as exc:
        raise BatchFileError(f"{where}: not a CSV line ({exc})") from None
    if [f.lower() for f in fields] == ["provider", "id"]:
        return None  # header
    if len(fields) == 1 and default_provider:
        fields = [default_provider, fields[0]]
    if len(fields) != 2 or not all(fields):
        hint = " (or give --provider for lines with an id alone)" if len(fields) == 1 else ""
        raise BatchFileError(f"{where}: expected provider,id{hint}")
    return BatchRef(fields[1], fields[0])
