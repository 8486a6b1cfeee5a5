"""Wake-ups for schedulers: jobs were added, leases changed hands (a cancel), or
subscriptions were added or cancelled (the ticker's next due time moved).

In one process an ``asyncio.Event`` is set after the submit commits, so a new job starts
within milliseconds. Across nodes on PostgreSQL the submit transaction also sends
``NOTIFY``, which PostgreSQL delivers only if that transaction commits. A cancel wakes
every node's lease check the same way, so the node running the job abandons it at once
instead of at its next heartbeat.
"""

from __future__ import annotations

import asyncio

import msgspec

from app.db.direct import DirectConnection

CHANNEL = "jobnode_jobs"
LEASE_CHANNEL = "jobnode_leases"
#: A subscription was added or cancelled: every node's ticker reads its next due time.
SUBSCRIPTIONS_CHANNEL = "jobnode_subscriptions"
#: Webhook deliveries were written (a cancel, the reaper, a re-send): every node's
#: delivery service looks for due ones.
WEBHOOKS_CHANNEL = "jobnode_webhooks"
#: Jobs that ended, for reads waiting on them in other processes: ``[sender, [ids]]``.
ENDED_CHANNEL = "jobnode_ended"
#: NOTIFY payloads must stay under 8000 bytes: ids per notification.
ENDED_PER_NOTIFY = 150
#: Jobs added on another node or worker wake this node's claim loop this much later, all
#: of them at once (see ``JobSignal.wake_from_elsewhere``).
ELSEWHERE_WAKE_SECONDS = 0.02


class JobSignal:
    def __init__(self, sender: str = "") -> None:
        self._event = asyncio.Event()
        self._leases = asyncio.Event()
        self._subscriptions = asyncio.Event()
        self._webhooks = asyncio.Event()
        self._elsewhere: asyncio.TimerHandle | None = None
        #: Sent as the NOTIFY payload, so that a node ignores its own notifications: it
        #: was already woken in-process.
        self.sender = sender

    @property
    def notification(self) -> tuple[str, str]:
        """``pg_notify`` arguments for a statement that adds jobs."""
        return CHANNEL, self.sender

    def notify(self) -> None:
        """Work may be waiting: jobs were added, or a busy scheduler freed a slot."""
        self._event.set()

    def leases_changed(self) -> None:
        """A job was cancelled: the lease check should run now."""
        self._leases.set()

    def subscriptions_changed(self) -> None:
        """A subscription was added or cancelled: the ticker's next due time may have moved."""
        self._subscriptions.set()

    def webhooks_changed(self) -> None:
        """Webhook deliveries were written: the delivery service should claim them now."""
        self._webhooks.set()

    def wake(self, channel: str) -> None:
        """What a notification on ``channel`` means for this node's scheduler."""
        if channel == LEASE_CHANNEL:
            self.leases_changed()
        elif channel == SUBSCRIPTIONS_CHANNEL:
            self.subscriptions_changed()
        elif channel == WEBHOOKS_CHANNEL:
            self.webhooks_changed()
        else:
            self.notify()

    def wake_from_elsewhere(self, channel: str) -> None:
        """A notification from another node or worker. The node that added jobs claims
        them itself at once, unless it is full; woken at once as well, every other node
        raced it for them, and under load each submit there cost a claim here (two
        workers ran slower than one). So jobs added elsewhere wake this claim loop once
        per ``ELSEWHERE_WAKE_SECONDS``, in time to take what the busy node left."""
        if channel != CHANNEL:
            self.wake(channel)
        elif self._elsewhere is None:
            self._elsewhere = asyncio.get_running_loop().call_later(ELSEWHERE_WAKE_SECONDS, self._woken_from_elsewhere)

    def _woken_from_elsewhere(self) -> None:
        self._elsewhere = None
        self.notify()

    async def notify_other_nodes(self, conn: DirectConnection, channel: str = CHANNEL) -> None:
        """Call inside the writing transaction; a no-op off PostgreSQL."""
        await conn.notify(channel, self.sender)

    def ended_notifications(self, job_ids: list[str]) -> list[tuple[str, str]]:
        """``pg_notify`` arguments announcing the ended jobs, to send in the transaction that
        ends them."""
        return [
            (ENDED_CHANNEL, msgspec.json.encode([self.sender, job_ids[start : start + ENDED_PER_NOTIFY]]).decode())
            for start in range(0, len(job_ids), ENDED_PER_NOTIFY)
        ]

    def ended_ids(self, payload: str) -> list[str]:
        """The ids of an ``ENDED_CHANNEL`` payload sent by another process."""
        sender, job_ids = msgspec.json.decode(payload)
        return [] if sender == self.sender else job_ids

    async def wait(self, timeout: float) -> bool:
        """Block until notified or ``timeout`` passed; True when notified."""
        return await _wait(self._event, timeout)

    async def wait_leases(self, timeout: float) -> bool:
        return await _wait(self._leases, timeout)

    async def wait_subscriptions(self, timeout: float) -> bool:
        return await _wait(self._subscriptions, timeout)

    async def wait_webhooks(self, timeout: float) -> bool:
        return await _wait(self._webhooks, timeout)


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    # ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` wraps the
    # coroutine in a task of its own, and the claim loop waits once per claim.
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    finally:
        event.clear()
    return True
