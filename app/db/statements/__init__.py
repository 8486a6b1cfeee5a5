"""Every SQL statement the node runs, named, one module per area.

A statement is a module-level ``app.db.direct.Statement`` (a Core statement with named
``bindparam``\\ s), or, where a request picks among a few shapes, a cached factory that
returns one. Where the databases need different SQL, both forms live here, side by side,
and the domain never branches on the dialect. ``tests/test_statements.py`` EXPLAINs
every statement of this package on PostgreSQL and runs each through both drivers.
"""
