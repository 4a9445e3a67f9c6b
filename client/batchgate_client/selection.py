"""What `batchgate stop` reads from its options: times (RFC 3339, or an age such as `2h`), metadata
pairs (`k=v`) and statuses, each turned into what `cancel_matching` takes, or a `SelectionError`
whose message names the option. Pure functions: the current time is an argument.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable

from batchgate_client.models import SELECTOR_STATUSES, SelectorStatus

# Seconds per unit of an age: `90s`, `30m`, `2h`, `7d`, `2w`, or several at once (`1h30m`).
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_AGE = re.compile(r"(?:\d+[smhdw])+")
_AGE_PART = re.compile(r"(\d+)([smhdw])")
_UINT32_MAX = 2**32 - 1


class SelectionError(ValueError):
    """An option's value that cannot be used; the message names the option and says why."""


def parse_time(value: str, now: float, option: str) -> int:
    """Unix seconds for `value`: an age (`2h`, `30m`, `7d`, `1h30m`: that long before `now`) or an
    RFC 3339 time with its zone (`2025-06-01T12:00:00Z`, `...+02:00`); a date alone
    (`2025-06-01`) is its midnight UTC. A time without a zone is refused: which zone it means is a
    guess."""
    text = value.strip()
    if _AGE.fullmatch(text):
        seconds = sum(int(n) * AGE_UNITS[unit] for n, unit in _AGE_PART.findall(text))
        if seconds <= 0:
            raise SelectionError(f"{option} {value!r}: an age must be longer than 0")
        when = int(now) - seconds
        if when <= 0:
            raise SelectionError(f"{option} {value!r}: that is before 1970")
        return when
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise SelectionError(
            f"{option} {value!r}: expected an age such as 2h, 30m or 7d, or an RFC 3339 time such as "
            "2025-06-01T12:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            parsed = parsed.replace(tzinfo=datetime.UTC)
        else:
            raise SelectionError(f"{option} {value!r}: give the time zone (Z for UTC, or an offset such as +02:00)")
    seconds_f = parsed.timestamp()
    if not 0 < seconds_f <= _UINT32_MAX:
        raise SelectionError(f"{option} {value!r}: must be between 1970 and 2106")
    return int(-(-seconds_f // 1))  # rounded up, as the client rounds a datetime


def parse_metadata(pairs: Iterable[str], option: str = "--metadata") -> dict[str, str]:
    """`k=v` pairs (split at the first `=`); a key given twice is a mistake, not an override."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SelectionError(f"{option} {pair!r}: expected KEY=VALUE")
        if not key:
            raise SelectionError(f"{option} {pair!r}: the key is empty")
        if not value:
            raise SelectionError(f"{option} {pair!r}: the value is empty (a batch's metadata value never is)")
        if key in metadata and metadata[key] != value:
            raise SelectionError(f"{option}: {key!r} given twice ({metadata[key]!r} and {value!r})")
        metadata[key] = value
    return metadata


def parse_statuses(values: Iterable[str], option: str = "--status") -> list[SelectorStatus]:
    """Unified statuses, lowercased, each once."""
    statuses: list[SelectorStatus] = []
    for value in values:
        status = value.strip().lower()
        if status not in SELECTOR_STATUSES:
            known = ", ".join(sorted(SELECTOR_STATUSES))
            raise SelectionError(f"{option} {value!r}: not a batch status (known: {known})")
        if status not in statuses:
            statuses.append(status)
    return statuses


def rfc3339(seconds: int) -> str:
    """Unix seconds as `2025-06-01T12:00:00Z`."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
