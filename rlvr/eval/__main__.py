"""``python -m rlvr.eval``: see :mod:`rlvr.eval`."""

import sys

from rlvr.eval import main

if __name__ == "__main__":
    sys.exit(main())
