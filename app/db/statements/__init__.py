"""Every SQL statement the node runs, named, one module per area.

* ``claims``: a running job's statements (claim, committed steps, step commit, renewal,
  graceful release);
* ``submits``: new jobs (submits, the jobs they claim, streamed jobs);
* ``reads``: what the API reads (results, a client's job ids, the cursor, ``/info``);
* ``status``: ``status_in``/``status_is``, the status conditions every statement uses;
* ``maintenance``: the reaper, orphan take-back and pruner (``app.maintenance``) and the
  operator's job actions (``app.jobs.actions``);
* ``inspection``: what the operator reads (``app.jobs.inspection``, ``app.jobs.queue_numbers``);
* ``subscriptions``: the ticker's and the subscription endpoints' statements;
* ``idempotency``: submits' ``Idempotency-Key`` rows (claim, read, prune of expired ones).
* ``webhooks``: the webhook outbox (``app.maintenance.webhooks``) and what the operator
  reads of it.

A statement is a module-level ``app.db.direct.Statement`` (a Core statement with named
``bindparam``\\ s), UPPER_CASE. Hot paths run it on ``database.direct_read()`` /
``direct_write()`` connections (``conn.fetch(STATEMENT, params)``), cold ones on a
SQLAlchemy connection (``await STATEMENT.run(conn, params)``). Besides:

* where a request picks among a few shapes, a factory decorated with
  ``@app.db.direct.shapes([...])``, listing the arguments of every shape (cached, like
  ``functools.cache``);
* where the databases need different SQL, ``PerDialect(postgresql=…, sqlite=…)``: both
  forms side by side here, and the domain runs ``STATEMENT.pick(database)``, never asking
  which database it is;
* rows inserted together (``conn.insert_many``): a ``RowsInsert`` of the table and its
  columns (one ``INSERT … SELECT … FROM json_populate_recordset(…)`` on PostgreSQL, a NOTIFY optionally in it).

``tests/test_statements.py`` finds every one of these in this package and fails for one
without an example in ``tests/statement_scenario.py`` (examples live in the tests, never in
this package); it EXPLAINs each on PostgreSQL (and SQLite) and runs each through both
drivers and SQLite.
"""
