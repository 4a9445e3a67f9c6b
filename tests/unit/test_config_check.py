"""Issue 23: a config a CI can trust, configs that cannot crash the loader, and secrets in files.

- `check_config` (what `batchgate config check` runs): unknown fields with the nearest name, every
  unresolved reference in one run, `--allow-missing-env`, no providers / no batch-enabled key, the
  open-gateway check; the service itself only warns about unknown fields (start and reload).
- A deeply nested file or a malformed Redis URL is one line naming the field.
- `file./path` values: read from the file (relative to the config's directory), without its
  trailing line break; a missing file is named like a missing environment variable; a rotated
  secret is a reload, in place or by a Kubernetes `..data` swap.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

from gateway.paths import ROOT
from service.config.reader import ConfigError
from service.infra.providers.catalog import load_config, parse_config
from service.runtime.check import check_config
from service.runtime.live import ConfigSource, FileWatcher, LiveConfig

KEY = "sk-unit-check-0123456789"
VK = "sk-bf-unit-check-team"


def good() -> dict:
    return {"providers": {"openai": {"keys": [{"name": "main", "value": KEY, "use_for_batch_api": True}]}}}


def write(tmp_path: Path, data: dict | str, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def problems(path: Path, **options) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        check_config(path, env=options.pop("env", {}), **options)
    return info.value.problems


# --- unknown fields -------------------------------------------------------------------------------


def test_a_typo_is_an_error_naming_the_path_and_the_nearest_name(tmp_path: Path) -> None:
    data = good()
    data["providers"]["openai"]["keys"][0]["wieght"] = 3
    data["providers"]["openai"]["network_config"] = {"max_retires": 1}
    data["client"] = {"enforce_auth_on_inference": True, "no_such_setting": 1}
    assert problems(write(tmp_path, data)) == (
        "client.no_such_setting: unknown field",
        "providers.openai.keys[0].wieght: unknown field (did you mean `weight`?)",
        "providers.openai.network_config.max_retires: unknown field (did you mean `max_retries`?)",
    )


def test_the_service_ignores_unknown_fields_with_a_warning_at_start_and_reload(tmp_path: Path, caplog) -> None:
    data = good()
    data["providers"]["openai"]["keys"][0]["wieght"] = 3
    path = write(tmp_path, data)
    config = load_config(path, {})  # loads: an upgrade must not stop a running deployment
    assert config.providers["openai"].keys[0].weight == 1.0
    warning = "config: providers.openai.keys[0].wieght: unknown field (did you mean `weight`?), ignored"
    with caplog.at_level(logging.WARNING):
        live = LiveConfig.from_file(ConfigSource(path, env={}))
        assert caplog.text.count(warning) == 1
        assert live.reload()
        assert caplog.text.count(warning) == 2


def test_bifrost_fields_batchgate_has_no_use_for_are_not_unknown(tmp_path: Path) -> None:
    data = good()
    data["$schema"] = "https://example.invalid/config.schema.json"
    data["providers"]["openai"]["keys"][0]["models"] = ["gpt-4o"]
    bedrock = {"access_key": "AKIA", "secret_key": "s", "region": "us-east-1", "arn": "arn:aws:bedrock:x"}
    data["providers"]["bedrock"] = {"keys": [{"use_for_batch_api": True, "bedrock_key_config": bedrock}]}
    assert check_config(write(tmp_path, data), env={}).report.unknown_fields == ()


def test_a_block_another_provider_reads_is_unknown_where_it_is_ignored(tmp_path: Path) -> None:
    data = good()
    data["providers"]["openai"]["keys"][0]["azure_key_config"] = {"endpoint": "https://x.openai.azure.com"}
    assert problems(write(tmp_path, data)) == ("providers.openai.keys[0].azure_key_config: unknown field",)


def test_every_field_the_readme_and_the_examples_use_is_known(tmp_path: Path) -> None:
    for path in (ROOT / "config.example.json",):
        assert load_config(path, {}, allow_unresolved=True).report.unknown_fields == ()


# --- references ------------------------------------------------------------------------------------


def test_every_unset_variable_is_named_in_one_run() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "config.example.json", {})
    assert [re.sub(r".*variable (\w+) is not set", r"\1", p) for p in info.value.problems] == [
        "OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BACKUP_API_KEY",
    ]
    assert info.value.problems[0] == "providers.openai.keys[0].value: environment variable OPENAI_API_KEY is not set"


def test_allow_missing_env_checks_the_rest_and_lists_what_it_could_not(tmp_path: Path) -> None:
    config = check_config(ROOT / "config.example.json", env={}, allow_missing_env=True)
    assert len(config.report.unresolved) == 5 and sorted(config.providers) == ["anthropic", "azure", "openai"]
    # What a missing variable stands for is not checked, everything else is.
    data = json.loads((ROOT / "config.example.json").read_text())
    data["providers"]["openai"]["keys"][0]["weihgt"] = 1
    data["governance"] = {"virtual_keys": [{"id": "a", "value": "env.TEAM_VK", "provider_configs": []}]}
    assert problems(write(tmp_path, data), allow_missing_env=True) == (
        "providers.openai.keys[0].weihgt: unknown field (did you mean `weight`?)",
    )


def test_the_readme_lists_the_variables_config_example_json_needs() -> None:
    config = load_config(ROOT / "config.example.json", {}, allow_unresolved=True)
    needed = sorted(re.search(r"variable (\w+) is not set", p).group(1) for p in config.report.unresolved)
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"`config\.example\.json` needs ([^(]*)\(", readme)
    assert listed is not None and sorted(re.findall(r"`([A-Z_]+)`", listed.group(1))) == needed


# --- what a config must have ----------------------------------------------------------------------


def test_an_empty_config_and_one_without_a_batch_enabled_key_are_refused(tmp_path: Path) -> None:
    assert problems(write(tmp_path, {})) == (
        "providers: none configured (every cancel would be refused: provider_not_configured)",
    )
    data = good()
    data["providers"]["openai"]["keys"][0]["use_for_batch_api"] = False
    data["providers"]["fireworks"] = {"keys": [{"value": "fw"}]}  # cannot cancel anyway: not reported
    assert problems(write(tmp_path, data)) == (
        'providers.openai.keys: no batch-enabled key (a key is used for batches when it has "use_for_batch_api": '
        "true and is enabled; cancels on it would fail with no_batch_keys)",
    )
    data["client"] = {"allow_direct_keys": True}  # callers bring their own keys
    assert check_config(write(tmp_path, data), env={}).providers["openai"].batch_keys == ()


def test_an_open_gateway_beyond_loopback_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, good())
    assert check_config(path, env={}).providers
    (problem,) = problems(path, env={"BIND_HOST": "0.0.0.0"})
    assert problem.startswith("BIND_HOST=0.0.0.0: refusing to listen on 0.0.0.0: the gateway is open")
    data = good()
    data["client"] = {"enforce_auth_on_inference": True}
    data["governance"] = {"virtual_keys": [{"id": "a", "value": VK, "provider_configs": [{"provider": "openai"}]}]}
    assert check_config(write(tmp_path, data), env={"BIND_HOST": "0.0.0.0"}).virtual_keys


# --- configs that used to crash the loader --------------------------------------------------------


def test_a_deeply_nested_config_is_one_line_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, '{"providers": {"openai": {"keys": ' + "[" * 100_000 + "]" * 100_000 + "}}}")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    (problem,) = info.value.problems
    assert problem.startswith("providers.openai.keys[0][0][0]") and problem.endswith(
        ": nested more than 32 levels deep"
    )
    # A string that looks nested is not.
    data = good()
    data["providers"]["openai"]["keys"][0]["name"] = "[[[{{{" * 100
    assert load_config(write(tmp_path, data), {}).providers["openai"].keys[0].name == "[[[{{{" * 100


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@[::1/0", "governance.store.url: not a valid URL (check the host and its brackets)"),
        ("redis://:pw@h:port/0", "governance.store.url: the port is not a number"),
    ],
)
def test_a_malformed_redis_url_is_one_line_naming_the_field_never_the_url(tmp_path: Path, url, expected) -> None:
    data = good()
    data["governance"] = {"store": {"type": "redis", "url": url}}
    assert problems(write(tmp_path, data)) == (expected,)


def test_a_malformed_base_url_is_one_line_naming_the_field(tmp_path: Path) -> None:
    data = good()
    data["providers"]["openai"]["network_config"] = {"base_url": "http://[::1"}
    assert problems(write(tmp_path, data)) == (
        "providers.openai.network_config.base_url: not a valid URL (check the host and its brackets)",
    )


# --- secrets in files ------------------------------------------------------------------------------


def test_a_file_reference_reads_the_file_without_its_line_break(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "openai").write_text(KEY + "\n")
    absolute = tmp_path / "vk"
    absolute.write_text(VK)
    data = good()
    data["providers"]["openai"]["keys"][0]["value"] = "file.secrets/openai"  # from the config's directory
    data["governance"] = {
        "virtual_keys": [{"id": "a", "value": f"file.{absolute}", "provider_configs": [{"provider": "openai"}]}]
    }
    config = load_config(write(tmp_path, data), {})
    assert config.providers["openai"].keys[0].value == KEY and config.virtual_keys[0].value == VK
    assert [path for path, _ in config.report.secret_files] == sorted([str(tmp_path / "secrets/openai"), str(absolute)])


def test_missing_secret_files_are_named_with_the_unset_variables(tmp_path: Path) -> None:
    data = good()
    data["providers"]["openai"]["keys"][0]["value"] = "file./nonexistent/openai-key"
    data["providers"]["anthropic"] = {"keys": [{"value": "env.UNIT_UNSET", "use_for_batch_api": True}]}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), {})
    assert info.value.problems == (
        "providers.openai.keys[0].value: cannot read secret file /nonexistent/openai-key (No such file or directory)",
        "providers.anthropic.keys[0].value: environment variable UNIT_UNSET is not set",
    )
    assert len(check_config(write(tmp_path, data), env={}, allow_missing_env=True).report.unresolved) == 2


def test_a_secret_value_never_appears_in_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "vk"
    secret.write_text("not-a-virtual-key-TOPSECRET")
    data = good()
    data["governance"] = {"virtual_keys": [{"id": "a", "value": f"file.{secret}"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data, {})
    assert str(info.value) == "governance.virtual_keys[0].value: virtual key values start with sk-bf-"


def kubelet_write(mount: Path, files: dict[str, str], version: int) -> None:
    """What the kubelet does to a Secret volume: a new version directory, an atomic swap of `..data`,
    the old version removed; each file is `name -> ..data/name`."""
    directory = mount / f"..2026_12_08_{version:06d}"
    directory.mkdir(parents=True)
    for name, content in files.items():
        (directory / name).write_text(content)
        if not (mount / name).is_symlink():
            (mount / name).symlink_to(f"..data/{name}")
    old = (mount / "..data").resolve() if (mount / "..data").is_symlink() else None
    (mount / "..data_tmp").symlink_to(directory.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    if old is not None:
        for child in old.iterdir():
            child.unlink()
        old.rmdir()


def test_a_rotated_secret_file_is_a_reload_in_place_or_by_a_data_swap(tmp_path: Path) -> None:
    mount = tmp_path / "secret-volume"
    kubelet_write(mount, {"openai": "sk-first\n"}, 1)
    data = good()
    data["providers"]["openai"]["keys"][0]["value"] = f"file.{mount / 'openai'}"
    path = write(tmp_path, data)
    live = LiveConfig.from_file(ConfigSource(path, env={}))
    watcher = FileWatcher(live)
    watcher.poll()
    running = live.current
    assert running.config.providers["openai"].keys[0].value == "sk-first"

    kubelet_write(mount, {"openai": "sk-second\n"}, 2)
    watcher.poll()
    assert live.current.config.providers["openai"].keys[0].value == "sk-second"
    assert live.current.version == running.version  # the version is the config file's alone

    (mount / "openai").write_text("sk-third\n")  # updated in place
    watcher.poll()
    assert live.current.config.providers["openai"].keys[0].value == "sk-third"
    current = live.current
    watcher.poll()
    assert live.current is current  # nothing new: no reload


def test_sighup_reads_the_secret_file_again(tmp_path: Path) -> None:
    secret = tmp_path / "openai"
    secret.write_text("sk-first")
    data = good()
    data["providers"]["openai"]["keys"][0]["value"] = f"file.{secret}"
    live = LiveConfig.from_file(ConfigSource(write(tmp_path, data), env={}))
    secret.write_text("sk-second")
    assert live.reload()
    assert live.current.config.providers["openai"].keys[0].value == "sk-second"


def test_a_reload_with_a_malformed_redis_url_names_the_field(tmp_path: Path, caplog) -> None:
    path = write(tmp_path, good())
    live = LiveConfig.from_file(ConfigSource(path, env={}))
    data = good()
    data["governance"] = {"store": {"type": "redis", "url": "redis://:pw@[::1/0"}}
    path.write_text(json.dumps(data))
    assert not live.reload()
    assert "config reload failed: governance.store.url: not a valid URL (check the host and its brackets)" in (
        caplog.messages
    )
    assert "pw@" not in caplog.text
