"""Alias of :mod:`dualnn.benchmarks.compare`; ``python -m dualnn.bench`` = ``dualnn bench``."""

import sys

if __name__ == "__main__":
    from dualnn.benchmarks.compare import main

    sys.exit(main(prog="python -m dualnn.bench"))
else:
    from .benchmarks import compare as _module

    sys.modules[__name__] = _module
