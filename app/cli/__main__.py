"""``python -m app.cli``: how the benchmark and the tests start a node from a checkout."""

import sys

from app.cli import main

sys.exit(main())
