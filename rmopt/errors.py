"""One exception type for user-facing errors, and the wrapper that prints them as one line."""

from __future__ import annotations

import functools
import sys


class RmoptError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


def cli_errors(fn):
    """Run a CLI entry point; a user-facing error becomes ``error: ...`` on stderr and exit code 1.

    Hydra's own errors (an unknown config option, a bad override) are reported by Hydra; errors
    raised inside a task come through here. Set ``RMOPT_TRACEBACK=1`` to see the full traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import os

        try:
            return fn(*args, **kwargs)
        except (RmoptError, ValueError, FileNotFoundError) as e:
            if os.environ.get("RMOPT_TRACEBACK"):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    return wrapper
