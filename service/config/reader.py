"""Typed, path-naming access to a parsed config.json: every config error is one `ConfigError` line
that names the offending field (`providers.openai.keys[0].value: ...`).

String settings may be references, resolved at every load (start and reload): `env.NAME` reads the
environment variable NAME; `file./path` reads a file (a mounted Kubernetes Secret, say; a relative
path is taken from the config file's directory), without its trailing line break. A reference that
cannot be resolved is not an error at once: every one of them is collected (`Reading.unresolved`),
so one run names them all.

A reading also notes which fields of each object nothing asked for: `Reading.unknown_fields()`
names them, with the nearest known name (`did you mean \\`weight\\`?`).
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import SplitResult, urlsplit

T = TypeVar("T")

ENV_PREFIX = "env."
FILE_PREFIX = "file."
# A secret file larger than this is not a secret (a service-account JSON is ~2.4 KB).
MAX_SECRET_FILE_BYTES = 1 << 20


class ConfigError(Exception):
    """A config problem, with the path of the offending field in the message. `problems` holds one
    line per problem when a reading found several (every unresolved `env.`/`file.` reference)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems: tuple[str, ...] = problems


# How a config type error names what was expected, in JSON terms.
_JSON_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


def shown(name: str, limit: int = 64) -> str:
    """A field name from the file as it may appear in a one-line message."""
    text = name.encode("unicode_escape").decode()
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class Reading:
    """One reading of a config: where its references are resolved (the environment, the directory of
    relative `file.` paths) and what it found besides the values."""

    env: Mapping[str, str]
    base_dir: Path | None = None
    # "field: environment variable X is not set" for each reference that could not be resolved.
    unresolved: list[str] = field(default_factory=list)
    # Secret files read: path -> SHA-256 of their content (to notice a change; never shown).
    files: dict[str, str] = field(default_factory=dict)
    readers: list[ConfigReader] = field(default_factory=list)

    def unknown_fields(self) -> list[str]:
        """`path.name: unknown field` (with the nearest name the reader asked for) for every key of
        an object that nothing read: a typo (`wieght`) or a setting batchgate does not have."""
        # One object may have been read by several readers (`governance` for its keys, and again
        # for its store): what any of them asked for is known.
        objects: dict[int, tuple[ConfigReader, set[str]]] = {}
        for reader in self.readers:
            objects.setdefault(id(reader.data), (reader, set()))[1].update(reader.asked)
        problems = []
        for reader, asked in objects.values():
            for name in reader.data:
                if name in asked or not isinstance(name, str):
                    continue
                close = difflib.get_close_matches(name, sorted(asked), n=1, cutoff=0.6)
                hint = f" (did you mean `{close[0]}`?)" if close else ""
                problems.append(f"{reader.where(shown(name))}: unknown field{hint}")
        return problems


class ConfigReader:
    """Typed access to one JSON object, with the field path for error messages. It remembers the
    names it was asked for, so that a reading can name the fields nothing read."""

    def __init__(self, data: Any, path: str, env: Reading | Mapping[str, str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: expected an object, got {type(data).__name__}")
        self.data, self.path = data, path
        self.reading = env if isinstance(env, Reading) else Reading(env)
        self.asked: set[str] = set()
        self.reading.readers.append(self)

    @property
    def env(self) -> Mapping[str, str]:
        return self.reading.env

    def where(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def known(self, *names: str) -> None:
        """Names this object may carry that batchgate reads nowhere (Bifrost settings it has no use
        for): not reported as unknown."""
        self.asked.update(names)

    @overload
    def get(self, name: str, kind: type[T], default: T) -> T: ...

    @overload
    def get(self, name: str, kind: type[T], default: None = None) -> T | None: ...

    @overload
    def get(self, name: str, kind: tuple[type[Any], ...], default: Any = None) -> Any: ...

    def get(self, name: str, kind: type[Any] | tuple[type[Any], ...], default: Any = None) -> Any:
        """The field `name` if it is of `kind` (a type, or a tuple of the types it may be), else
        `default` when it is absent or null; ConfigError naming the field otherwise."""
        self.asked.add(name)
        value = self.data.get(name, default)
        if value is None:
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # bool is an int in Python, never in the config: `true` is not a count.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            numbers = kinds if float not in kinds else tuple(k for k in kinds if k is not int)
            expected = " or ".join(_JSON_TYPES.get(k, k.__name__) for k in numbers)
            raise ConfigError(f"{self.where(name)}: expected {expected}, got {type(value).__name__}")
        return value

    def env_string(self, name: str, *, required: bool, check: Callable[[str], Any] | None = None) -> str:
        """A string setting (a key, a region, an endpoint), read from the environment when the
        config says `env.NAME` and from a file when it says `file./path`. `check` (which raises
        ConfigError) runs on the resolved value. An unresolved reference is noted in the reading and
        reads as "" here (`unresolved(name)` tells), without the `required` or `check` tests."""
        value = self.get(name, str, "")
        resolved = self._resolve(name, value)
        if resolved is None:
            return ""
        if required and not resolved:
            raise ConfigError(f"{self.where(name)}: must not be empty")
        if check is not None and resolved:
            check(resolved)
        return resolved

    def unresolved(self, name: str) -> bool:
        """Whether `name` is a reference this reading could not resolve."""
        prefix = f"{self.where(name)}: "
        return any(problem.startswith(prefix) for problem in self.reading.unresolved)

    def _resolve(self, name: str, value: str) -> str | None:
        if value.startswith(ENV_PREFIX):
            var = value[len(ENV_PREFIX) :]
            if var and var in self.env:
                return self.env[var]
            self.reading.unresolved.append(f"{self.where(name)}: environment variable {var or '(empty)'} is not set")
            return None
        if value.startswith(FILE_PREFIX):
            return self._file(name, value[len(FILE_PREFIX) :])
        return value

    def _file(self, name: str, reference: str) -> str | None:
        path = Path(reference)
        if reference and not path.is_absolute() and self.reading.base_dir is not None:
            path = self.reading.base_dir / path
        try:
            if not reference:
                raise IsADirectoryError(21, "no path after file.")
            with open(path, "rb") as file:
                content = file.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            self.reading.unresolved.append(f"{self.where(name)}: cannot read secret file {path} ({exc.strerror})")
            return None
        if len(content) > MAX_SECRET_FILE_BYTES:
            raise ConfigError(f"{self.where(name)}: secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
        self.reading.files[str(path)] = hashlib.sha256(content).hexdigest()
        try:
            return content.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(f"{self.where(name)}: secret file {path} is not UTF-8 text") from None

    def child(self, name: str) -> ConfigReader:
        self.asked.add(name)
        return ConfigReader(self.data.get(name) or {}, self.where(name), self.reading)

    def items(self, name: str) -> list[ConfigReader]:
        """A list of objects (`keys`, `virtual_keys`), one reader each (`keys[0]`, ...)."""
        items = self.get(name, list, [])
        return [ConfigReader(item, f"{self.where(name)}[{i}]", self.reading) for i, item in enumerate(items)]


def split_url(value: str, where: str) -> SplitResult:
    """`urlsplit` that names the field instead of raising ValueError (a `[` without `]`, a port
    that is not a number). Never repeats the URL: it may hold credentials."""
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an IPv6 host without its closing bracket
        raise ConfigError(f"{where}: not a valid URL (check the host and its brackets)") from None
    try:
        _ = parts.port  # urlsplit reads the port only when asked
    except ValueError:
        raise ConfigError(f"{where}: the port is not a number") from None
    return parts


def http_url(value: str, where: str) -> str:
    # Error messages never repeat the URL: it may hold credentials.
    parts = split_url(value, where)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be an http(s) URL with a host")
    if "?" in value or "#" in value or parts.username or parts.password:
        raise ConfigError(f"{where}: must not carry a query, fragment or credentials")
    return value.rstrip("/")


def env_of(env: os._Environ[str] | Mapping[str, str] | None) -> Mapping[str, str]:
    """The environment references are read from (None: this process's)."""
    return os.environ if env is None else env
