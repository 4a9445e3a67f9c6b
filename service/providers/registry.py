"""Kept only for `service.observability`, which still imports KNOWN_PROVIDERS from here; the
catalog (`service.providers.catalog`) is the list of providers. Delete once nothing imports this."""

from service.providers.catalog import KNOWN_PROVIDERS

__all__ = ["KNOWN_PROVIDERS"]
