"""Experimental methods: may change or disappear without notice.

Stable rlvr code never imports this package. Importing it warns once.
"""

import warnings

warnings.warn(
    "rlvr.experimental is not covered by semantic versioning; its API may change without notice.",
    FutureWarning,
    stacklevel=2,
)
