"""parse_config / load_config: defaults, env resolution, field-path errors, secret hygiene."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from service.config.file import Key
from service.config.reader import ConfigError
from service.infra.providers.catalog import NO_BATCH_CANCEL, load_config, parse_config

SECRET = "sk-live-TOPSECRET-0123456789"
AZ_SECRET = "az-live-TOPSECRET-abcdef"


def base() -> dict:
    """A minimal valid config with one OpenAI key and one Azure key."""
    return {
        "providers": {
            "openai": {"keys": [{"value": SECRET}]},
            "azure": {
                "keys": [{"value": AZ_SECRET, "azure_key_config": {"endpoint": "https://res.openai.azure.com/"}}]
            },
        }
    }


def with_value(path: str, value) -> dict:
    """base() with one value set at a dotted path (`[i]` indexes a list)."""
    data = copy.deepcopy(base())
    node = data
    parts = path.replace("[", ".[").split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key = int(part[1:-1]) if part.startswith("[") else part
        if last:
            node[key] = value
        else:
            if isinstance(key, int):
                while len(node) <= key:
                    node.append({"value": SECRET})
            elif key not in node:
                node[key] = {}
            node = node[key]
    return data


def config_error(data, env=None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={} if env is None else env)
    message = str(info.value)
    assert "\n" not in message, "a config error is one line"
    return message


# --- defaults ---------------------------------------------------------------------------------------


def test_defaults_for_keys_network_provider_and_client():
    config = parse_config(base(), env={})
    openai = config.providers["openai"]
    (key,) = openai.keys
    assert key.value == SECRET
    assert key.enabled is True
    assert key.use_for_batch_api is False
    assert key.weight == 1.0
    assert key.name == "openai-key-0" and key.id == "openai-key-0"
    assert key.settings is None
    net = openai.network
    assert net.timeout_s == 30.0
    assert (net.max_retries, net.retry_backoff_initial_ms, net.retry_backoff_max_ms) == (2, 100, 2000)
    assert net.base_url is None and net.extra_headers == {}
    assert openai.send_back_raw_response is False and openai.concurrency == 1000
    assert openai.batch_keys == ()  # use_for_batch_api defaults to false
    client = config.client
    assert (client.allow_per_request_raw_override, client.allow_direct_keys, client.enforce_auth_on_inference) == (
        False,
        False,
        False,
    )


def test_azure_defaults_api_version_and_strips_endpoint_slash():
    az_key = parse_config(base(), env={}).providers["azure"].keys[0]
    assert az_key.settings.api_version == "2024-10-21"
    assert az_key.settings.endpoint == "https://res.openai.azure.com"
    assert az_key.value == AZ_SECRET


def test_empty_config_and_null_sections_have_no_providers():
    assert parse_config({}, env={}).providers == {}
    assert parse_config({"providers": None, "client": None}, env={}).providers == {}


def test_explicit_values_are_kept():
    data = {
        "client": {"allow_per_request_raw_override": True, "allow_direct_keys": True},
        "providers": {
            "openai": {
                "keys": [{"id": "k1", "name": "primary", "value": SECRET, "weight": 2, "use_for_batch_api": True}],
                "network_config": {
                    "base_url": "https://proxy.example/openai/",
                    "extra_headers": {"OpenAI-Organization": "org-1"},
                    "default_request_timeout_in_seconds": 2.5,
                    "max_retries": 0,
                    "retry_backoff_initial_ms": 5,
                    "retry_backoff_max_ms": 50,
                },
                "send_back_raw_response": True,
                "concurrency_and_buffer_size": {"concurrency": 7},
            },
            "azure": {
                "keys": [
                    {
                        "value": AZ_SECRET,
                        "azure_key_config": {
                            "endpoint": "https://res.openai.azure.com",
                            "api_version": "2025-04-01-preview",
                        },
                    }
                ]
            },
        },
    }
    config = parse_config(data, env={})
    openai = config.providers["openai"]
    key = openai.keys[0]
    assert (key.id, key.name, key.weight, key.use_for_batch_api) == ("k1", "primary", 2.0, True)
    assert isinstance(key.weight, float)
    assert openai.network.base_url == "https://proxy.example/openai"
    assert openai.network.extra_headers == {"OpenAI-Organization": "org-1"}
    assert openai.network.timeout_s == 2.5
    assert (openai.network.max_retries, openai.network.retry_backoff_initial_ms) == (0, 5)
    assert openai.network.retry_backoff_max_ms == 50
    assert openai.send_back_raw_response is True and openai.concurrency == 7
    assert config.client.allow_per_request_raw_override is True and config.client.allow_direct_keys is True
    assert config.providers["azure"].keys[0].settings.api_version == "2025-04-01-preview"


def test_key_name_default_counts_position_and_id_defaults_to_name():
    data = {"providers": {"openai": {"keys": [{"value": "a", "name": "named"}, {"value": "b"}]}}}
    first, second = parse_config(data, env={}).providers["openai"].keys
    assert (first.name, first.id) == ("named", "named")
    assert (second.name, second.id) == ("openai-key-1", "openai-key-1")


# --- env.VAR ----------------------------------------------------------------------------------------


def test_env_values_are_resolved_from_the_given_env():
    data = base()
    data["providers"]["openai"]["keys"][0]["value"] = "env.OPENAI_API_KEY"
    data["providers"]["azure"]["keys"][0]["azure_key_config"] = {
        "endpoint": "env.AZURE_ENDPOINT",
        "api_version": "env.AZURE_API_VERSION",
    }
    env = {"OPENAI_API_KEY": SECRET, "AZURE_ENDPOINT": "https://env-res.openai.azure.com/", "AZURE_API_VERSION": "v9"}
    config = parse_config(data, env=env)
    assert config.providers["openai"].keys[0].value == SECRET
    azure = config.providers["azure"].keys[0].settings
    assert (azure.endpoint, azure.api_version) == ("https://env-res.openai.azure.com", "v9")


def test_explicit_env_is_used_instead_of_the_process_environment(monkeypatch):
    monkeypatch.setenv("BATCHGATE_UNIT_KEY", SECRET)
    data = with_value("providers.openai.keys[0].value", "env.BATCHGATE_UNIT_KEY")
    assert parse_config(data).providers["openai"].keys[0].value == SECRET  # env=None: os.environ
    message = config_error(data, env={})
    assert "BATCHGATE_UNIT_KEY" in message


@pytest.mark.parametrize(
    ("path", "var"),
    [
        ("providers.openai.keys[0].value", "MISSING_OPENAI_KEY"),
        ("providers.openai.keys[2].value", "MISSING_THIRD_KEY"),
        ("providers.azure.keys[0].azure_key_config.endpoint", "MISSING_ENDPOINT"),
        ("providers.azure.keys[0].azure_key_config.api_version", "MISSING_VERSION"),
    ],
)
def test_missing_env_var_names_field_and_var_but_no_secret(path, var):
    data = with_value(path, f"env.{var}")
    # Keys resolved from env before the failing one: their values must not leak into the message.
    keys = data["providers"]["openai"]["keys"]
    for i, key in enumerate(keys):
        if f"keys[{i}]" not in path:
            key["value"] = "env.PRESENT"
    env = {"PRESENT": "sk-present-SECRET-777", "UNRELATED": "sk-unrelated-SECRET"}
    message = config_error(data, env=env)
    assert message.startswith(f"{path}:")
    assert var in message and "not set" in message
    assert "SECRET" not in message


def test_empty_env_var_name_and_empty_secret():
    assert config_error(with_value("providers.openai.keys[0].value", "env."), env={}).startswith(
        "providers.openai.keys[0].value: environment variable (empty)"
    )
    message = config_error(with_value("providers.openai.keys[0].value", "env.EMPTY"), env={"EMPTY": ""})
    assert message == "providers.openai.keys[0].value: must not be empty"
    message = config_error(with_value("providers.openai.keys[0].value", ""))
    assert message == "providers.openai.keys[0].value: must not be empty"
    assert config_error(with_value("providers.azure.keys[0].azure_key_config", {})).startswith(
        "providers.azure.keys[0].azure_key_config.endpoint: must not be empty"
    )


# --- wrong types ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("providers.openai.keys[0].weight", "heavy", "providers.openai.keys[0].weight"),
        ("providers.openai.keys[0].weight", True, "providers.openai.keys[0].weight"),
        ("providers.openai.keys[1].enabled", "yes", "providers.openai.keys[1].enabled"),
        ("providers.openai.keys[0].use_for_batch_api", 1, "providers.openai.keys[0].use_for_batch_api"),
        ("providers.openai.keys[0].value", 12345, "providers.openai.keys[0].value"),
        ("providers.openai.keys[0].name", ["x"], "providers.openai.keys[0].name"),
        ("providers.openai.keys[0]", "sk-bare-string", "providers.openai.keys[0]"),
        ("providers.openai.keys", {"value": "x"}, "providers.openai.keys"),
        ("providers.openai.network_config", "fast", "providers.openai.network_config"),
        ("providers.openai.network_config.max_retries", 1.5, "providers.openai.network_config.max_retries"),
        ("providers.openai.network_config.max_retries", False, "providers.openai.network_config.max_retries"),
        (
            "providers.openai.network_config.default_request_timeout_in_seconds",
            "30",
            "providers.openai.network_config.default_request_timeout_in_seconds",
        ),
        ("providers.openai.network_config.base_url", 8080, "providers.openai.network_config.base_url"),
        ("providers.openai.network_config.extra_headers", ["X-A"], "providers.openai.network_config.extra_headers"),
        (
            "providers.openai.network_config.extra_headers",
            {"X-Org": 5},
            "providers.openai.network_config.extra_headers.X-Org",
        ),
        ("providers.openai.send_back_raw_response", "true", "providers.openai.send_back_raw_response"),
        (
            "providers.openai.concurrency_and_buffer_size.concurrency",
            "10",
            "providers.openai.concurrency_and_buffer_size.concurrency",
        ),
        ("client.allow_direct_keys", "no", "client.allow_direct_keys"),
        ("providers.azure.keys[0].azure_key_config.endpoint", 5, "providers.azure.keys[0].azure_key_config.endpoint"),
        ("providers.azure.keys[0].azure_key_config", "https://x", "providers.azure.keys[0].azure_key_config"),
        ("providers.openai", ["keys"], "providers.openai"),
    ],
)
def test_wrong_types_name_the_field(path, value, field):
    message = config_error(with_value(path, value))
    assert message.startswith(f"{field}:"), message
    assert SECRET not in message


def test_root_must_be_an_object():
    assert config_error([]) == "config: expected an object, got list"
    assert config_error({"providers": ["openai"]}).startswith("providers: expected an object")


def test_bool_timeout_is_a_type_error():
    message = config_error(with_value("providers.openai.network_config.default_request_timeout_in_seconds", True))
    assert message.startswith("providers.openai.network_config.default_request_timeout_in_seconds:")


def test_unknown_provider_is_named_with_the_known_list():
    data = base()
    data["providers"]["openia"] = {"keys": []}
    message = config_error(data)
    assert message.startswith("providers.openia: unknown provider")
    assert "openai" in message and "azure" in message


def test_known_provider_without_batch_cancel_is_accepted():
    name = "cohere" if "cohere" in NO_BATCH_CANCEL else sorted(NO_BATCH_CANCEL - {"vertex", "bedrock", "fireworks"})[0]
    config = parse_config({"providers": {name: {"keys": [{"value": "co-key"}]}}}, env={})
    assert config.providers[name].keys[0].value == "co-key"


# --- URLs and headers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "api.openai.com",
        "api.openai.com/v1",
        "ftp://proxy.example",
        "https://proxy.example/v1?key=abc",
        "https://proxy.example/#frag",
        "https://user:pass@proxy.example",
        "https://user@proxy.example",
        "https://",
        "file:///etc/passwd",
    ],
)
def test_bad_base_url_is_refused(url):
    assert config_error(with_value("providers.openai.network_config.base_url", url)).startswith(
        "providers.openai.network_config.base_url:"
    )
    assert config_error(with_value("providers.azure.keys[0].azure_key_config.endpoint", url)).startswith(
        "providers.azure.keys[0].azure_key_config.endpoint:"
    )


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "https://proxy.example/openai/", "https://proxy.example//"])
def test_good_base_url_is_kept_without_trailing_slash(url):
    config = parse_config(with_value("providers.openai.network_config.base_url", url), env={})
    assert config.providers["openai"].network.base_url == url.rstrip("/")


@pytest.mark.parametrize("url", ["https://proxy.example?", "https://proxy.example#"])
def test_base_url_with_empty_query_or_fragment_is_refused(url):
    config_error(with_value("providers.openai.network_config.base_url", url))


@pytest.mark.parametrize("url", ["ftp://user:hunter2pw@proxy.example", "https://user:hunter2pw@"])
def test_bad_url_error_does_not_echo_credentials(url):
    message = config_error(with_value("providers.openai.network_config.base_url", url))
    assert "hunter2pw" not in message


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "v\r\nX-Injected: 1"},
        {"X-A": "line\nbreak"},
        {"X-A": "nul\0"},
        pytest.param(
            {"X-A\nB": "v"},
            id="newline-in-name",
        ),
        {"": "v"},
    ],
)
def test_extra_headers_must_be_single_line_strings(headers):
    message = config_error(with_value("providers.openai.network_config.extra_headers", headers))
    assert message.startswith("providers.openai.network_config.extra_headers.")
    assert message.endswith("must be a single-line string")


# --- numbers ----------------------------------------------------------------------------------------


def test_negative_weight_names_the_field_and_zero_is_allowed():
    message = config_error(with_value("providers.openai.keys[0].weight", -0.5))
    assert message == "providers.openai.keys[0].weight: must not be negative"
    zero = parse_config(with_value("providers.openai.keys[0].weight", 0), env={})
    assert zero.providers["openai"].keys[0].weight == 0


@pytest.mark.parametrize("name", ["max_retries", "retry_backoff_initial_ms", "retry_backoff_max_ms"])
def test_negative_network_numbers_are_refused(name):
    message = config_error(with_value(f"providers.openai.network_config.{name}", -1))
    assert "providers.openai.network_config" in message and name in message
    zero = parse_config(with_value(f"providers.openai.network_config.{name}", 0), env={})
    assert getattr(zero.providers["openai"].network, name) == 0


@pytest.mark.parametrize("value", [-1, 0, -0.5])
def test_timeout_must_be_positive(value):
    message = config_error(with_value("providers.openai.network_config.default_request_timeout_in_seconds", value))
    assert message.startswith("providers.openai.network_config")
    assert "positive" in message


def test_timeout_error_names_the_config_field():
    message = config_error(with_value("providers.openai.network_config.default_request_timeout_in_seconds", -1))
    assert "default_request_timeout_in_seconds" in message


@pytest.mark.parametrize("value", [0, -3])
def test_concurrency_must_be_at_least_one(value):
    message = config_error(with_value("providers.openai.concurrency_and_buffer_size.concurrency", value))
    assert message == "providers.openai.concurrency_and_buffer_size.concurrency: must be at least 1"


# --- load_config ------------------------------------------------------------------------------------


def test_load_config_reads_json_and_env(tmp_path):
    path = tmp_path / "config.json"
    data = with_value("providers.openai.keys[0].value", "env.KEY_FROM_ENV")
    path.write_text(json.dumps(data))
    config = load_config(path, env={"KEY_FROM_ENV": SECRET})
    assert config.providers["openai"].keys[0].value == SECRET
    assert load_config(str(path), env={"KEY_FROM_ENV": SECRET}).providers.keys() == {"openai", "azure"}


def test_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "providers": {\n    "openai": {"keys": [,]}\n  }\n}')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: not valid JSON")
    assert "line 3 column 25" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unreadable_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_config(missing, env={})
    assert str(info.value) == f"{missing}: cannot read config (No such file or directory)"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})  # a directory
    assert str(info.value).startswith(f"{tmp_path}: cannot read config (")


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"providers": {"openai": {"keys": [{"value": "\xff\xfe"}]}}}')
    with pytest.raises(ConfigError):
        load_config(path, env={})


def test_load_config_passes_field_errors_through(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(with_value("providers.openai.keys[0].weight", "x")))
    with pytest.raises(ConfigError, match=r"^providers\.openai\.keys\[0\]\.weight: expected a number, got str$"):
        load_config(path, env={})


# --- batch keys and secrets -------------------------------------------------------------------------


def test_batch_keys_are_enabled_batch_keys_higher_weight_first_then_config_order():
    keys = [
        {"name": "zeta", "value": "v1", "use_for_batch_api": True},
        {"name": "alpha", "value": "v2"},
        {"name": "beta", "value": "v3", "use_for_batch_api": True, "enabled": False},
        {"name": "gamma", "value": "v4", "use_for_batch_api": True, "enabled": True},
        {"name": "delta", "value": "v5", "use_for_batch_api": False, "enabled": True},
        {"name": "aardvark", "value": "v6", "use_for_batch_api": True, "weight": 99},
    ]
    provider = parse_config({"providers": {"openai": {"keys": keys}}}, env={}).providers["openai"]
    assert [k.name for k in provider.batch_keys] == ["aardvark", "zeta", "gamma"]
    assert [k.name for k in provider.keys] == ["zeta", "alpha", "beta", "gamma", "delta", "aardvark"]


def test_equal_weights_keep_config_order_and_zero_weight_goes_last():
    keys = [{"name": n, "value": n, "use_for_batch_api": True, "weight": w}
            for n, w in (("a", 1), ("b", 0), ("c", 2.5), ("d", 1), ("e", 2.5))]  # fmt: skip
    provider = parse_config({"providers": {"openai": {"keys": keys}}}, env={}).providers["openai"]
    assert [k.name for k in provider.batch_keys] == ["c", "e", "a", "d", "b"]


# --- type errors name the expected JSON type ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("providers.openai.keys", True, "providers.openai.keys: expected a list, got bool"),
        ("providers.openai.keys", 3, "providers.openai.keys: expected a list, got int"),
        ("providers.openai.keys[0].name", True, "providers.openai.keys[0].name: expected a string, got bool"),
        ("providers.openai.keys[0].weight", True, "providers.openai.keys[0].weight: expected a number, got bool"),
        ("providers.openai.keys[0].enabled", 1, "providers.openai.keys[0].enabled: expected true or false, got int"),
        ("providers.openai.network_config.max_retries", True,
         "providers.openai.network_config.max_retries: expected an integer, got bool"),
        ("providers.openai.network_config.default_request_timeout_in_seconds", False,
         "providers.openai.network_config.default_request_timeout_in_seconds: expected a number, got bool"),
        ("providers.openai.network_config.extra_headers", True,
         "providers.openai.network_config.extra_headers: expected an object, got bool"),
    ],
)  # fmt: skip
def test_type_errors_name_the_expected_json_type(path, value, message):
    assert config_error(with_value(path, value)) == message


# --- virtual keys -----------------------------------------------------------------------------------


def with_virtual_key(**fields) -> dict:
    data = base()
    data["governance"] = {"virtual_keys": [{"id": "team", "value": "sk-bf-team", **fields}]}
    return data


def test_virtual_key_provider_must_be_a_configured_provider():
    message = config_error(with_virtual_key(provider_configs=[{"provider": "opneai"}]))
    assert message == (
        "governance.virtual_keys[0].provider_configs[0].provider: unknown provider 'opneai' (configured: azure, openai)"
    )
    message = config_error(with_virtual_key(provider_configs=[{"provider": "openai"}, {"provider": "anthropic"}]))
    assert message == (
        "governance.virtual_keys[0].provider_configs[1].provider: provider 'anthropic' is not configured under "
        "providers (configured: azure, openai)"
    )


def test_virtual_key_key_ids_must_name_configured_keys_of_that_provider():
    data = with_value("providers.openai.keys[0].id", "prod")
    data["governance"] = {"virtual_keys": [{"value": "sk-bf-x", "provider_configs": [
        {"provider": "openai", "key_ids": ["prod"]}, {"provider": "azure", "key_ids": ["prod"]}]}]}  # fmt: skip
    assert config_error(data) == (
        "governance.virtual_keys[0].provider_configs[1].key_ids: no key 'prod' configured for azure"
    )
    data["governance"]["virtual_keys"][0]["provider_configs"][1]["key_ids"] = [7]
    assert config_error(data) == "governance.virtual_keys[0].provider_configs[1].key_ids[0]: expected a string, got int"
    del data["governance"]["virtual_keys"][0]["provider_configs"][1]
    assert parse_config(data, env={}).virtual_keys[0].providers == {"openai": frozenset({"prod"})}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2027-01-01T00:00:00Z", 1798761600), ("2027-01-01T02:00:00+02:00", 1798761600), (1798761600, 1798761600)],
)
def test_expires_at_is_rfc3339_with_a_zone_or_unix_seconds(value, expected):
    config = parse_config(with_virtual_key(expires_at=value, provider_configs=[{"provider": "openai"}]), env={})
    assert config.virtual_keys[0].expires_at == expected


@pytest.mark.parametrize("value", ["2027-01-01T00:00:00", "2027-01-01"])
def test_expires_at_without_a_zone_is_refused_not_read_in_local_time(value):
    message = config_error(with_virtual_key(expires_at=value, provider_configs=[{"provider": "openai"}]))
    assert message.startswith(f"governance.virtual_keys[0].expires_at: {value!r} has no time zone")


def test_api_version_is_a_short_token():
    data = with_value("providers.openai.api_version", "2024-10-21")
    assert parse_config(data, env={}).providers["openai"].api_version == "2024-10-21"
    assert parse_config(base(), env={}).providers["openai"].api_version is None
    assert config_error(with_value("providers.openai.api_version", "2024\r\nX: y")).startswith(
        "providers.openai.api_version: expected a version like"
    )


def test_reprs_never_contain_the_secret():
    config = parse_config(base(), env={})
    key = config.providers["openai"].keys[0]
    assert "openai-key-0" in repr(key)  # the repr is still useful
    for text in (repr(key), str(key), repr(config.providers["openai"]), repr(config)):
        assert SECRET not in text and AZ_SECRET not in text
    assert Key(id="i", name="n", value="hidden-value").__repr__().count("hidden-value") == 0


def test_config_imports_no_provider():
    """Config is below the providers layer: the provider names and key schemas are passed in
    (service.infra.providers.catalog), so loading config never pulls in an adapter (or botocore)."""
    code = "import sys, service.config.file; print(sorted(m for m in sys.modules if m.startswith('service.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "service.infra.providers" not in loaded and "service.config.file" in loaded


def test_key_settings_come_from_the_schema_that_is_passed_in():
    from service.config.file import PLAIN_KEYS
    from service.config.file import parse_config as parse_with

    data = {"providers": {"openai": {"keys": [{"value": SECRET}]}, "azure": {"keys": [{"value": SECRET}]}}}
    config = parse_with(data, {}, {"openai": PLAIN_KEYS, "azure": PLAIN_KEYS})
    assert config.providers["azure"].keys[0].settings is None  # no azure_key_config demanded
    with pytest.raises(ConfigError, match=r"^providers\.azure: unknown provider \(known: openai\)$"):
        parse_with(data, {}, {"openai": PLAIN_KEYS})
