"""``python -m dualnn.benchmarks``: same as ``dualnn bench``."""

import sys

from .compare import main

sys.exit(main())
