"""The garbage collector, set for a server that allocates many short-lived objects.

Every request, claim and step builds and drops thousands of small objects (parsed JSON,
SQLAlchemy rows and parameters, HTTP headers). With CPython's default thresholds (700
allocations) the youngest generation is collected hundreds of times a second under load,
and each full collection walks every object the process holds, the modules and
the libraries loaded at start included. What lives from the start to the end of the
process is moved out of the collector's sight once the node has started (``gc.freeze``),
and the youngest generation is collected less often. Reference counting frees almost all
of these objects anyway; the collector is only for cycles, which stay collected.
"""

from __future__ import annotations

import gc

#: Allocations (net of frees) between two collections of the youngest generation.
YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Once per serving process (``jobnode serve``, each worker), before it serves: what it
    holds then is never garbage. Not in the node's lifespan: the tests start many nodes in
    one process, and what a frozen one leaves behind would never be collected."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
