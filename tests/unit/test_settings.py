"""The process's settings (service/config/settings.py): one default per setting, README's table says
the same, and values are read from the environment once, typed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config.settings import DEFAULTS, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_settings() -> dict[str, str]:
    """The settings table under "Two commands": variable -> default, as README words them."""
    text = README.read_text()
    table = text[text.index("| variable | default | meaning |") :]
    rows = table.split("\n\n", 1)[0].splitlines()[2:]
    documented = {}
    for row in rows:
        names, defaults = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names = re.findall(r"`([A-Z0-9_]+)`", names)
        values = [value.strip() for value in defaults.split(", ")] if len(names) > 1 else [defaults]
        if len(values) == 1:
            values *= len(names)  # one default said once for all the row's variables
        assert len(values) == len(names), row
        documented.update(zip(names, values, strict=True))
    return documented


def test_readme_lists_every_setting_with_its_default() -> None:
    assert readme_settings() == Settings.documented_defaults()


def test_values_are_read_typed_and_an_empty_one_is_unset() -> None:
    settings = Settings.from_env(
        {"HTTP_PORT": "18080", "DRAIN_DELAY_SECONDS": "0.5", "OTEL_SDK_DISABLED": "TRUE", "CONFIG": "", "X": "y"}
    )
    assert (settings.http_port, settings.drain_delay_seconds, settings.otel_sdk_disabled) == (18080, 0.5, True)
    assert settings.config is None and settings.grpc_port == 50051
    assert Settings.from_env({}) == DEFAULTS


def test_a_value_that_does_not_parse_names_its_variable() -> None:
    with pytest.raises(ValueError, match="^METRICS_PORT: not a valid value: 'nine'$"):
        Settings.from_env({"METRICS_PORT": "nine"})


def test_one_metrics_default_for_the_gateway_and_a_lone_service() -> None:
    """METRICS_PORT used to default to 9464 in gateway/run.py and to off in `python -m service`."""
    assert DEFAULTS.metrics_port == 9464
