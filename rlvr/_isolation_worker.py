"""Entry point of the worker processes started by :func:`rlvr.rewards.isolated`."""

import sys

from rlvr.rewards import _worker_main

if __name__ == "__main__":
    _worker_main(int(sys.argv[1]), int(sys.argv[2]))
