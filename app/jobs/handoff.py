"""Jobs that a node claims with the INSERT that stores them.

A job submitted to a node with free capacity and nothing waiting in the database would
be inserted ``pending``, woken, claimed (an UPDATE of the same row) and started. The
node's own scheduler takes it instead in the INSERT: the row is written once, already
``running`` on its first attempt under this node's lease, and its chain starts when that
commit returns. For the database, and for every reader of it, this is a claim like any
other: if the node dies before or while it runs the job, the lease expires (or the node,
restarting, takes the job back) and it runs again.

Only when nothing is waiting: a job submitted while older ones are pending goes behind
them, and the claim loop takes jobs in their order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from app.jobs.values import ClaimedJob


class SubmitClaims(Protocol):
    """This process's scheduler, as the submit path sees it."""

    def reserve(self, wanted: int) -> int:
        """How many of ``wanted`` new jobs (the first ones) to store claimed by this node."""

    def claimed_columns(self, now: datetime) -> dict[str, Any]:
        """The columns of a row stored already claimed (status, attempts, lease)."""

    def start_claimed(self, jobs: list[ClaimedJob], reserved: int) -> None:
        """The claimed rows committed: run them. ``reserved`` ends the reservation."""

    def unreserve(self, reserved: int) -> None:
        """The rows were not stored: the reservation ends, nothing runs."""


class NoClaims:
    """A node without a scheduler (``scheduler.enabled: false``) stores every job pending."""

    def reserve(self, wanted: int) -> int:
        return 0

    def claimed_columns(self, now: datetime) -> dict[str, Any]:
        raise AssertionError("nothing is reserved")

    def start_claimed(self, jobs: list[ClaimedJob], reserved: int) -> None:
        raise AssertionError("nothing is reserved")

    def unreserve(self, reserved: int) -> None:
        pass
