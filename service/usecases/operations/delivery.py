"""The webhook of a finished operation: its final JSON (what GetOperation answers) POSTed to
`notify.url`, signed with `operations.notify_secret`.

A 2xx is delivered; a 4xx (or a redirect, never followed) is final; a 5xx or no answer is tried
again after a backoff (`OperationPolicy.webhook_retry`) until `webhook_for_s` after the operation
finished. The delivery's state is stored with the operation (`Notification`), so whichever worker
runs it after a restart goes on from there.
"""

from __future__ import annotations

import logging

from service.domain.operations import NOTIFY_DELIVERED, NOTIFY_FAILED, NOTIFY_PENDING, Notification
from service.usecases.operations.run import Run
from service.usecases.operations.worker import Webhook

log = logging.getLogger(__name__)


async def deliver_webhook(run: Run) -> None:
    """Delivers the webhook or gives up on it, unless this worker leaves first. Raises LeaseLost."""
    op, progress, webhook = run.operation, run.progress, run.worker.webhook
    notification = op.notification
    while notification.state == NOTIFY_PENDING and not run.control.leaving:
        now = run.worker.now()
        if now >= notification.until or webhook is None:
            notification.state = NOTIFY_FAILED
            notification.last_error = notification.last_error or "gave up"
            log.error("operation %s: webhook not delivered: %s", op.name, notification.last_error)
        elif notification.next_at > now:
            await run.control.sleep(notification.next_at - now)
            continue
        else:
            status, problem = await _post(run, webhook)
            _record(run, notification, status, problem)
        progress.operation_changed()
        await progress.flush()


async def _post(run: Run, webhook: Webhook) -> tuple[int | None, str]:
    """The receiver's HTTP status, or what went wrong before there was one."""
    with run.worker.runtimes.current as runtime:  # a finished operation's webhook goes out whoever its creator is now
        secret = runtime.config.operations.notify_secret
    if not secret:
        return None, "no operations.notify_secret is configured"
    items = run.progress.items or await run.worker.store.items(run.operation.name)
    try:
        body = await webhook.render(run.operation, items)
        return await webhook.sender.post(run.operation.notification.url, body, secret), ""
    except Exception as exc:  # noqa: BLE001 - no answer (OSError, TimeoutError, aiohttp's errors) or a bug: tried again
        return None, f"no answer ({type(exc).__name__})"


def _record(run: Run, notification: Notification, status: int | None, problem: str) -> None:
    name = run.operation.name
    notification.attempts += 1
    if status is not None and 200 <= status < 300:
        notification.state, notification.last_error = NOTIFY_DELIVERED, ""
        log.info("operation %s: webhook delivered (HTTP %d)", name, status)
    elif status is not None and status < 500:
        notification.state, notification.last_error = NOTIFY_FAILED, f"HTTP {status}"
        log.error("operation %s: webhook refused with HTTP %d; not retried", name, status)
    else:
        notification.last_error = problem or f"HTTP {status}"
        delay = run.worker.policy.webhook_retry.delay(notification.attempts, run.worker.timing.rand)
        notification.next_at = run.worker.now() + delay
        log.warning("operation %s: webhook failed (%s); again in %.0f s", name, notification.last_error, delay)
