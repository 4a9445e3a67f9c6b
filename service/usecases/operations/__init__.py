"""Cancel by selector as durable long-running operations (AIP-151): `Operations` starts them and
answers google.longrunning.Operations calls; `Runner` runs one; `Scheduler` leases and takes over."""

from service.usecases.operations.runner import Backoff, Runner, Settings
from service.usecases.operations.scheduler import Scheduler
from service.usecases.operations.service import Found, Operations

__all__ = ["Backoff", "Found", "Operations", "Runner", "Scheduler", "Settings"]
