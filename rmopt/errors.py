"""One exception type for user-facing errors, and the CLI wrapper that prints them as one line."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


class RmoptError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


# What the CLIs report as one line (no traceback): ours, and the bad-value / missing-file errors of the
# libraries we call with user input.
USER_ERRORS = (RmoptError, ValueError, FileNotFoundError)


def one_line(e: BaseException) -> str:
    """The first line of an exception's message; Hydra's override errors keep their hint (second line)."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:2]) if _is_hydra_error(e) else lines[0]


def _is_hydra_error(e: BaseException) -> bool:
    from hydra.errors import HydraException, InstantiationException

    return isinstance(e, HydraException) and not isinstance(e, InstantiationException)


def user_error(e: BaseException) -> BaseException | None:
    """The user error behind ``e``: itself, or what it wraps (``hydra.utils.instantiate`` wraps the
    errors of the objects it builds); a Hydra config/override error counts too. None for a bug."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, USER_ERRORS) or _is_hydra_error(e):
            return e
        e = e.__cause__
    return None


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str] | None:
    """The options of a config group (``model`` -> toy-tiny, ...), or None if it is no group of ours."""
    folder = config_dir / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


def check_overrides(args: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Catch the common command-line mistakes before Hydra, with a one-line answer each.

    An unknown option of one of our config groups lists the valid ones; a bare ``{`` in a value
    (Hydra's grammar rejects it) shows how to quote it.
    """
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if "{" in value and not value.startswith(("'", '"')) and "${" not in value:
            raise RmoptError(
                f"{key}={value}: Hydra's override grammar needs a value with braces quoted; "
                f"write '{key}=\"{value}\"' (single quotes around the whole argument)"
            )
        if "." in key or key.startswith("hydra/") or "(" in value or value == "null":
            continue
        options = group_options(key, config_dir)
        if options is None:
            continue
        for choice in value.split(","):
            if choice and choice not in options:
                raise RmoptError(f"unknown {key} {choice!r}; expected one of {', '.join(options)}")


def cli_errors(fn):
    """Run a Hydra CLI entry point with one-line errors and exit code 1 for user mistakes.

    Overrides are checked before Hydra parses them; errors raised inside the task come through
    here too. Set ``RMOPT_TRACEBACK=1`` to see the full traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Let errors from inside the task reach this wrapper instead of Hydra's traceback printer.
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
        try:
            check_overrides(sys.argv[1:])
            return fn(*args, **kwargs)
        except Exception as e:
            cause = user_error(e)
            if cause is None or os.environ.get("RMOPT_TRACEBACK"):
                raise
            print(f"error: {one_line(cause)}", file=sys.stderr)
            sys.exit(1)

    return wrapper
