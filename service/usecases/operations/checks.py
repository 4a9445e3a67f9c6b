"""What a CancelMatching request must be, and who may start one: every refusal here happens before
anything is listed or cancelled (400 in the Bifrost shape, 403, 429)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from service.config.file import Config
from service.config.governance import VirtualKey
from service.domain.errors import InvalidRequest, PermissionDenied, Unauthenticated
from service.domain.model import STATUSES
from service.domain.operations import (
    DEFAULT_DEADLINE_SECONDS,
    DEFAULT_MAX_BATCHES,
    DEFAULT_STATUSES,
    MAX_BATCHES_LIMIT,
    MAX_DEADLINE_SECONDS,
    MAX_EXPLICIT_BATCHES,
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
    CancelMatchingCommand,
    Selector,
)
from service.usecases.auth import Caller
from service.usecases.cancel import Canceller
from service.usecases.listing import providers_that_can_list
from service.usecases.target import Provider

SELECTOR_NOT_ALLOWED = (
    "cancelling by selector needs the gateway's admin credentials or a virtual key with allow_cancel_matching"
)


def normalized(command: CancelMatchingCommand) -> CancelMatchingCommand:
    """The request with its defaults filled in (0 means the default) and names lowercased."""
    selector = command.selector
    selector = replace(
        selector,
        providers=tuple(dict.fromkeys(p.strip().lower() for p in selector.providers)),
        statuses=tuple(dict.fromkeys(s.strip().lower() for s in selector.statuses)),
        batches=tuple(dict.fromkeys((batch_id, provider.strip().lower()) for batch_id, provider in selector.batches)),
    )
    return replace(
        command,
        selector=selector,
        max_batches=command.max_batches or DEFAULT_MAX_BATCHES,
        deadline_seconds=command.deadline_seconds or DEFAULT_DEADLINE_SECONDS,
    )


def check_request(command: CancelMatchingCommand, config: Config, canceller: Canceller) -> None:
    """Raises the 400 of a request that cannot run (`command` as sent, before `normalized`)."""
    selector = command.selector
    if selector.batches and selector.has_filters:
        raise InvalidRequest(
            "selector.batches names the batches itself: providers, statuses, created_after, created_before and "
            "metadata must then be empty",
            param="selector.batches",
        )
    if len(selector.batches) > MAX_EXPLICIT_BATCHES:
        raise InvalidRequest(
            f"selector.batches holds {len(selector.batches)} batches, more than {MAX_EXPLICIT_BATCHES}",
            param="selector.batches",
        )
    if command.max_batches > MAX_BATCHES_LIMIT:
        raise InvalidRequest(f"max_batches must be at most {MAX_BATCHES_LIMIT}", param="max_batches")
    if command.deadline_seconds > MAX_DEADLINE_SECONDS:
        raise InvalidRequest(f"deadline_seconds must be at most {MAX_DEADLINE_SECONDS}", param="deadline_seconds")
    _check_filters(selector)
    _check_providers(selector, canceller)
    _check_batches(selector, canceller)
    if command.notify_url and not config.operations.notify_allowed(command.notify_url):
        raise InvalidRequest(
            "notify.url must start with one of the URLs in the config's operations.notify_urls",
            code="notify_url_not_allowed",
            param="notify.url",
        )


def _check_filters(selector: Selector) -> None:
    """The creation bounds, statuses and metadata pairs of a selector."""
    if selector.created_after and selector.created_before and selector.created_after >= selector.created_before:
        raise InvalidRequest("created_after must be before created_before", param="selector.created_after")
    for index, status in enumerate(selector.statuses):
        if status.strip().lower() not in STATUSES:
            raise InvalidRequest(
                f"unknown status: {status[:64]} (known: {', '.join(sorted(STATUSES))})",
                code="unknown_status",
                param=f"selector.statuses[{index}]",
            )
    if len(selector.metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequest(f"selector.metadata holds more than {MAX_METADATA_PAIRS} pairs", param="selector.metadata")
    for name, value in selector.metadata.items():
        if not name or len(name) > MAX_METADATA_KEY:
            raise InvalidRequest(
                f"selector.metadata keys must be 1 to {MAX_METADATA_KEY} characters", param="selector.metadata"
            )
        if not value or len(value) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"selector.metadata[{name!r}] must be 1 to {MAX_METADATA_VALUE} characters", param="selector.metadata"
            )


def _check_providers(selector: Selector, canceller: Canceller) -> None:
    """Each provider a selector names is configured and can list its batches."""
    for index, provider in enumerate(selector.providers):
        param = f"selector.providers[{index}]"
        adapter = _provider(canceller, provider, param).adapter
        if not adapter.can_list():
            raise InvalidRequest(
                f"listing batches is not supported by provider: {adapter.name}",
                code="unsupported_operation",
                param=param,
                provider=adapter.name,
            )


def _check_batches(selector: Selector, canceller: Canceller) -> None:
    """Each named batch has an id its provider's cancel takes, on a configured provider."""
    for index, (batch_id, provider) in enumerate(selector.batches):
        param = f"selector.batches[{index}]"
        if not batch_id:
            raise InvalidRequest(f"{param}.id is required", param=f"{param}.id")
        if not provider.strip():
            raise InvalidRequest(f"{param}.provider is required", param=f"{param}.provider")
        adapter = _provider(canceller, provider, f"{param}.provider").adapter
        try:
            adapter.parse_id(batch_id)
        except InvalidRequest as err:
            raise InvalidRequest(f"{param}.id: {err.message}", param=f"{param}.id", provider=adapter.name) from None


def _provider(canceller: Canceller, name: str, param: str) -> Provider:
    try:
        return canceller.provider(name.strip().lower())
    except InvalidRequest as err:
        err.param = param
        raise


def check_access(caller: Caller, command: CancelMatchingCommand, canceller: Canceller) -> tuple[str, ...]:
    """Who may start this operation (`command` normalized): a selector needs admin or a virtual key
    with allow_cancel_matching, and stays within the caller's providers; explicit batches need the
    normal cancel permission for each provider. Returns the providers a selector lists."""
    if caller.direct_key is not None:
        raise InvalidRequest(
            "operations run in the background with the gateway's configured keys, not a caller's own key: "
            "call with a virtual key or the gateway's credentials",
            code="direct_key_unsupported",
        )
    selector = command.selector
    if selector.explicit:
        for provider in dict.fromkeys(provider for _, provider in selector.batches):
            canceller.auth.scope(caller, provider)
        return ()
    vk = caller.virtual_key
    if caller.identity != "admin" and (vk is None or not vk.allow_cancel_matching):
        raise PermissionDenied(SELECTOR_NOT_ALLOWED, code="cancel_matching_not_allowed")
    if selector.providers:
        for provider in selector.providers:
            canceller.auth.scope(caller, provider)
        return selector.providers
    providers = providers_that_can_list(canceller.adapters(), None if vk is None else vk.providers)
    if not providers:
        raise InvalidRequest("none of the providers this caller may use can list batches", param="selector.providers")
    return tuple(providers)


def default_statuses(command: CancelMatchingCommand) -> frozenset[str]:
    return frozenset(command.selector.statuses or DEFAULT_STATUSES)


def owner_caller(owner: str, config: Config, now: Callable[[], float] = time.time) -> Caller:
    """The caller an operation runs as, from its owner's identity and the config running now.
    Raises Unauthenticated (with the reason) when its virtual key was removed, deactivated or
    expired: the operation then stops."""
    if not owner.startswith("vk:"):
        return Caller(owner)
    key_id = owner[3:]
    vk = _virtual_key(config, key_id)
    if vk is None:
        reason = "was removed from the config"
    elif not vk.is_active:
        reason = "was deactivated"
    elif vk.expires_at is not None and vk.expires_at <= now():
        reason = "expired"
    else:
        return Caller(owner, vk)
    raise Unauthenticated(
        f"the virtual key that started this operation ({key_id}) {reason}; nothing more is cancelled",
        code="virtual_key_revoked",
    )


def _virtual_key(config: Config, key_id: str) -> VirtualKey | None:
    return next((vk for vk in config.virtual_keys if vk.id == key_id), None)
