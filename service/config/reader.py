"""Typed, path-naming access to a parsed config.json: every config error is one `ConfigError` line
that names the offending field (`providers.openai.keys[0].value: ...`). String values of the form
`env.NAME` are read from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

T = TypeVar("T")


class ConfigError(Exception):
    """A config problem, with the path of the offending field in the message."""


# How a config type error names what was expected, in JSON terms.
_JSON_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


class ConfigReader:
    """Typed access to one JSON object, with the field path for error messages."""

    def __init__(self, data: Any, path: str, env: Mapping[str, str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: expected an object, got {type(data).__name__}")
        self.data, self.path, self.env = data, path, env

    def where(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    @overload
    def get(self, name: str, kind: type[T], default: T) -> T: ...

    @overload
    def get(self, name: str, kind: type[T], default: None = None) -> T | None: ...

    @overload
    def get(self, name: str, kind: tuple[type[Any], ...], default: Any = None) -> Any: ...

    def get(self, name: str, kind: type[Any] | tuple[type[Any], ...], default: Any = None) -> Any:
        """The field `name` if it is of `kind` (a type, or a tuple of the types it may be), else
        `default` when it is absent or null; ConfigError naming the field otherwise."""
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

    def env_string(self, name: str, *, required: bool) -> str:
        """A string setting (a key, a region, an endpoint), read from the environment when the
        config says `env.NAME`."""
        value = self.get(name, str, "")
        if value.startswith("env."):
            var = value[4:]
            if not var or var not in self.env:
                raise ConfigError(f"{self.where(name)}: environment variable {var or '(empty)'} is not set")
            value = self.env[var]
        if required and not value:
            raise ConfigError(f"{self.where(name)}: must not be empty")
        return value

    def child(self, name: str) -> ConfigReader:
        return ConfigReader(self.data.get(name) or {}, self.where(name), self.env)


def http_url(value: str, where: str) -> str:
    # Error messages never repeat the URL: it may hold credentials.
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be an http(s) URL with a host")
    if "?" in value or "#" in value or parts.username or parts.password:
        raise ConfigError(f"{where}: must not carry a query, fragment or credentials")
    return value.rstrip("/")
