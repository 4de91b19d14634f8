"""Experimental methods: may change or disappear without notice.

Stable rlvr code never imports this package. Importing it warns once.
"""

import warnings

# warn_explicit: the importer is often importlib (an entry point), whose source line would be
# printed under the message; a pseudo file name gives one clean line, filterable by module
warnings.warn_explicit(
    "rlvr.experimental is not covered by semantic versioning; its API may change without notice.",
    FutureWarning,
    filename="rlvr.experimental",
    lineno=0,
    module="rlvr.experimental",
)
