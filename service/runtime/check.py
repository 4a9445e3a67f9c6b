"""`batchgate config check`: a config.json checked as strictly as a CI job needs, with the service's
own loader and messages.

The service itself is lenient where an upgrade must not break a running deployment: a field it does
not know is a warning at start and at reload (`unknown_field_warnings`). The check is not: every
problem it finds is an error line, all of them in one run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from service.config.file import Config
from service.config.reader import ConfigError
from service.infra.providers.catalog import ADAPTERS, load_config
from service.usecases.auth import exposure_problem

BIND_HOST_ENV = "BIND_HOST"


def check_config(
    path: str | Path,
    *,
    allow_missing_env: bool = False,
    env: Mapping[str, str] | None = None,
    bind_host: str | None = None,
) -> Config:
    """Loads `path` as the service would and applies the strict rules. Raises ConfigError whose
    `problems` are one line each:

    - every `env.NAME` that is not set and every `file./path` that cannot be read, unless
      `allow_missing_env` (for a CI without production secrets): then they are listed in the
      result's `report.unresolved`, and the checks of the values they stand for are skipped;
    - every unknown field, with the nearest known name (`did you mean \\`weight\\`?`);
    - no provider at all, and (unless `client.allow_direct_keys`) a provider that can cancel but
      has no batch-enabled key (enabled, `use_for_batch_api: true`): its cancels would all fail;
    - an open gateway (no virtual key or credentials required) that would listen on `bind_host`
      beyond loopback (default: the BIND_HOST environment variable, else 127.0.0.1, as `make run`).

    `env` (default: this process's environment) resolves `env.NAME` and BIND_HOST."""
    env = os.environ if env is None else env
    config = load_config(path, env, allow_unresolved=True)
    problems = [] if allow_missing_env else list(config.report.unresolved)
    problems += config.report.unknown_fields
    if not config.providers:
        problems.append("providers: none configured (every cancel would be refused: provider_not_configured)")
    elif not config.client.allow_direct_keys:
        for name, provider in sorted(config.providers.items()):
            if name in ADAPTERS and not provider.batch_keys:
                problems.append(
                    f"providers.{name}.keys: no batch-enabled key (a key is used for batches when it has "
                    '"use_for_batch_api": true and is enabled; cancels on it would fail with no_batch_keys)'
                )
    host = bind_host or env.get(BIND_HOST_ENV) or "127.0.0.1"
    exposed = exposure_problem(config, host)
    if exposed:
        problems.append(f"{BIND_HOST_ENV}={host}: {exposed}")
    if problems:
        raise ConfigError(*problems)
    return config


def unknown_field_warnings(config: Config) -> list[str]:
    """The lines the service logs at start and reload for fields it does not know (ignored there;
    `batchgate config check` refuses them)."""
    return [f"config: {problem}, ignored" for problem in config.report.unknown_fields]
