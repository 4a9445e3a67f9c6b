"""Cancel by selector as durable long-running operations (AIP-151).

`Operations` (service) starts them and answers the google.longrunning.Operations calls; `Scheduler`
leases them and takes over those whose worker died; a `Runner` runs one through its phases: finding,
cancelling, waiting, then its webhook (delivery). A `Worker` is what they all share: the store, the
config current at each step, time and the `OperationPolicy`.
"""

from service.usecases.operations.policy import Backoff, OperationPolicy
from service.usecases.operations.runner import Runner
from service.usecases.operations.scheduler import Scheduler
from service.usecases.operations.service import Found, Operations
from service.usecases.operations.worker import Webhook, Worker

__all__ = ["Backoff", "Found", "OperationPolicy", "Operations", "Runner", "Scheduler", "Webhook", "Worker"]
