"""Maintenance: the work that keeps the table right but is nobody's request, apart from the
claim loop (``app.scheduler``).

- ``reaper``: jobs whose lease expired go back to pending, or fail after their last attempt;
- ``pruner``: the retention, finished jobs older than ``retention.finished_jobs_days``, and
  idempotency keys past ``retention.idempotency_hours``;
- ``orphans``: at start, what this node identity was running before it restarted;
- ``ticker``: each subscription interval's job at its due time (SPEC §7);
- ``webhooks``: the webhook outbox's deliveries (``webhook_http``: one POST).

The reaper and the pruner run on one node at a time, the ticker and the webhook deliveries
on every node (row locks share their work), each in a loop of its own, started by the one
place that decides which node runs what (``leader.Leadership``). They log on
``jobnode.scheduler``, where these lines have always been (the webhooks on
``jobnode.webhooks``).
"""
