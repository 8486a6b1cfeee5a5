"""Whether PostgreSQL will vacuum the jobs table by itself, told once at start.

Every claim, step commit and end leaves the job's previous row version dead in the table
and its indexes until a VACUUM takes it away. The claim reads the oldest pending jobs
first through ``ix_jobs_claim``, so it walks past the entries of every job claimed since
the last VACUUM that cleaned the indexes (migration 0009; measured at 10 M stored, after
four drains of 58,000 claims: 675 pages, 1 ms of a 3.5 ms statement). With autovacuum
off — the server's setting or the table's — nothing takes them away: each claim costs
more than the last, for good, and the indexes only grow. The node does not vacuum in the
operator's place: a VACUUM of a big ``jobs`` reads all of its indexes (with 15.7 M stored,
one throttled as autovacuum throttles took 32 s and slowed a node draining a backlog by a
fifth), which is the server's to schedule. So it says so where the operator looks first:
the log, at start.
"""

from __future__ import annotations

import logging

from app.db.engine import Database
from app.db.statements.maintenance import AUTOVACUUM_OF_JOBS

log = logging.getLogger("jobnode.db")


#: How PostgreSQL spells false in a boolean storage parameter, as it keeps it (as written).
_FALSE = frozenset({"false", "off", "no", "0", "f", "n", "of"})


def never_vacuumed(server_setting: str, table_options: list[str] | None) -> str | None:
    """Why autovacuum leaves ``jobs`` alone (None: it does not). ``server_setting``: the
    server's ``autovacuum``; ``table_options``: the table's ``reloptions``."""
    for option in table_options or ():
        name, _, value = option.partition("=")
        if name == "autovacuum_enabled" and value.lower() in _FALSE:
            return f"the jobs table's {option}"
    if server_setting != "on":
        return "PostgreSQL's autovacuum setting is off"
    return None


async def warn_if_never_vacuumed(database: Database) -> str | None:
    """Log a warning when PostgreSQL will not vacuum ``jobs`` by itself; returns why."""
    if not database.is_postgresql:
        return None  # SQLite frees a row's old entries in the statement that replaces it
    try:
        async with database.read() as conn:
            row = (await AUTOVACUUM_OF_JOBS.run(conn)).one()
    except Exception as exc:  # advisory: the node starts all the same
        log.warning("could not tell whether PostgreSQL vacuums the jobs table: %s", exc)
        return None
    reason = never_vacuumed(row.server_setting, row.reloptions)
    if reason is not None:
        log.warning(
            "%s: nothing will vacuum the jobs table, so every claim reads past all the jobs "
            "claimed before and costs more than the last; turn autovacuum on or run "
            'VACUUM jobs regularly (README: "PostgreSQL upkeep")',
            reason,
        )
    return reason
