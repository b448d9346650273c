"""One exception type for user-facing errors, and the CLI wrapper that prints them as one line."""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


class RmoptError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


# What the CLIs report as one line (no traceback). Only our own error type: a ValueError or
# FileNotFoundError may be a bug, so it keeps its traceback; code that reads the user's input turns
# the mistakes it finds into RmoptError. Hydra's config/override errors count too (see user_error).
USER_ERRORS = (RmoptError,)


def one_line(e: BaseException) -> str:
    """The first line of an exception's message; Hydra's override errors keep their hint (second line)."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    from hydra.errors import HydraException

    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:2]) if isinstance(e, HydraException) else lines[0]


def _is_config_error(e: BaseException) -> bool:
    """A Hydra error about the command line or the config (not one ``instantiate`` wraps), or an
    OmegaConf error about a config value: a ``???`` left unset, an interpolation that does not resolve."""
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import GrammarParseError, InterpolationResolutionError, MissingMandatoryValue

    if isinstance(e, (MissingMandatoryValue, InterpolationResolutionError, GrammarParseError)):
        return True
    return isinstance(e, HydraException) and not isinstance(e, InstantiationException)


def user_error(e: BaseException) -> BaseException | None:
    """The user error behind ``e``, or None for a bug (which keeps its traceback).

    That is an :class:`RmoptError` or a Hydra config/override error (:func:`_is_config_error`), or
    one of those that ``hydra.utils.instantiate`` wrapped while building an object of the config.
    """
    from hydra.errors import InstantiationException

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, USER_ERRORS) or _is_config_error(e):
            return e
        if not isinstance(e, InstantiationException):
            return None
        e = e.__cause__
    return None


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str] | None:
    """The options of a config group (``model`` -> toy-tiny, ...), or None if it is no group of ours."""
    folder = config_dir / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


# Hydra's own command-line flags (hydra/_internal/utils.py) that take the next argument as their value.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun"}
_INFO_FLAGS = {"--info", "-i"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
GRAMMAR_URL = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def override_args(args: list[str]) -> list[str]:
    """The overrides among a Hydra command line's arguments: all but its flags and their values."""
    out, previous = [], None
    for arg in args:
        if previous in _FLAGS_WITH_VALUE or (previous in _INFO_FLAGS and arg in _INFO_CHOICES):
            previous = None  # the flag's value
            continue
        previous = arg
        if not arg.startswith("-"):
            out.append(arg)
    return out


def _parse(arg: str):
    """Hydra's parse of one override, or the OverrideParseException its grammar raises."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides([arg])[0]
    except OverrideParseException as e:
        return e


def _grammar_reason(e: BaseException) -> str:
    """What Hydra's grammar says about an override, without its boilerplate lines."""
    lines = [line.strip() for line in str(e).splitlines()]
    lines = [
        line for line in lines
        if line and not line.startswith(("See https://", "Error parsing override")) and line.strip("^ ")
    ]
    return lines[0] if lines else "not a valid override"


def _top_level_split(value: str) -> list[str]:
    """``value`` cut at the commas outside brackets and quotes (Hydra's sweep separators)."""
    pieces, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(value):
        if quote:
            quote = None if ch == quote and value[i - 1 : i] != "\\" else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0 and value[i - 1 : i] != "\\":
            pieces.append(value[start:i])
            start = i + 1
    return [*pieces, value[start:]]


def _quoted(text: str) -> str:
    """``text`` as a Hydra quoted string (backslashes before a quote, and at the end, doubled)."""
    return '"' + re.sub(r'(\\*)("|$)', lambda m: m[1] * 2 + ('\\"' if m[2] else ""), text) + '"'


def _string_values(override) -> list | None:
    """An override's value(s) as plain Python values (quoted strings as their text); None for a sweep
    other than a plain choice list (range, glob, interval)."""
    from hydra.core.override_parser.types import ChoiceSweep, QuotedString, Sweep

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return [v.text if isinstance(v, QuotedString) else v for v in value.list]
    if isinstance(value, Sweep):
        return None
    return [value]


def quoting_hint(arg: str) -> str | None:
    """The override ``arg`` (which Hydra's grammar rejects) with its value quoted so that Hydra reads the
    same text as a string, written for a shell; None when quoting is no fix (a bad key, a dict or list
    value, a value that is quoted already)."""
    from hydra.errors import OverrideParseException

    if "=" not in arg:
        return None
    if len(arg) > 1 and arg[0] == arg[-1] and arg[0] in "'\"":
        return quoting_hint(arg[1:-1])  # quotes meant for a shell that no shell removed
    key, value = arg.split("=", 1)
    if isinstance(_parse(f"{key}=x"), OverrideParseException):
        return None  # the key is what Hydra rejects
    pieces = [p.strip() for p in _top_level_split(value)]
    if any(not p or p[0] in "'\"[{" or re.fullmatch(r"\w+\(.*\)", p, re.S) for p in pieces):
        return None  # quoting would turn a dict, list, function (choice, range...) or quoted string into a string
    fixed = [p if not isinstance(_parse(f"{key}={p}"), OverrideParseException) else _quoted(p) for p in pieces]
    candidate = f"{key}={','.join(fixed)}"
    parsed = _parse(candidate)
    if isinstance(parsed, OverrideParseException) or _string_values(parsed) is None:
        return None
    # the fix must read as the text the user wrote: every quoted piece its own text
    values = _string_values(parsed)
    if len(values) != len(pieces) or any(f != p and v != p for f, p, v in zip(fixed, pieces, values, strict=True)):
        return None
    return shlex.quote(candidate)


def check_overrides(args: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Catch the common command-line mistakes before Hydra, with a one-line answer each.

    Each override is parsed with Hydra's own grammar: one it rejects gets its reason and, where quoting
    the value is the fix (a bare ``{seed}``), the quoted form, checked to parse; every override Hydra
    accepts passes (dicts, lists, quoted strings, interpolations, sweeps). An unknown option of one of
    our config groups lists the valid ones.
    """
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import OverrideParseException

    for arg in override_args(args):
        override = _parse(arg)
        if isinstance(override, OverrideParseException):
            reason = _grammar_reason(override)
            inner = arg[1:-1] if len(arg) > 1 and arg[0] == arg[-1] and arg[0] in "'\"" else None
            if inner and not isinstance(_parse(inner), OverrideParseException):
                raise RmoptError(
                    f"{arg}: Hydra's override grammar rejects it ({reason}): the quotes around the whole "
                    f"argument are for a shell, and none removed them; pass {inner} as the argument "
                    f"(in a shell: {shlex.quote(inner)})"
                )
            hint = quoting_hint(arg)
            if hint is not None:
                raise RmoptError(
                    f"{arg}: Hydra's override grammar rejects it ({reason}); "
                    f"quote the value, e.g. in a shell write {hint}"
                )
            raise RmoptError(f"{arg}: Hydra's override grammar rejects it ({reason}); see {GRAMMAR_URL}")
        key = override.key_or_group
        if override.type == OverrideType.DEL or "." in key or key.startswith("hydra"):
            continue
        options = group_options(key, config_dir)
        values = _string_values(override)
        if options is None or values is None:
            continue
        for value in values:
            choices = value if isinstance(value, list) else [value]  # a list selects several options
            for choice in choices:
                if isinstance(choice, (dict, list)) or choice is None or choice == "":
                    continue
                if isinstance(choice, str) and "${" in choice:
                    continue
                if str(choice) not in options:
                    raise RmoptError(f"unknown {key} {str(choice)!r}; expected one of {', '.join(options)}")


def _kind(value) -> str | None:
    """What a config key with this default takes, as the user would say it (None: anything goes)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return None


# Keys whose values other code checks: Lightning's Trainer takes strings for numbers (devices=auto).
_UNCHECKED_TYPES = ("hydra", "trainer", "logger")


def check_value_types(cfg) -> None:
    """A command-line value where its key wants a number or a boolean (``seed=abc``, ``batch_size=x``)
    is a user error named by its key, not a ValueError deep inside a stage or a library.

    Each plain ``key=value`` override of the running Hydra job is compared with the key's value in the
    same config composed without those overrides (the config-group choices kept): a number or a
    boolean there wants one here (or null); a default of null or a string takes anything. Outside a
    Hydra run (a test composing a config) it checks nothing.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import OmegaConf

    if not (HydraConfig.initialized() and GlobalHydra.instance().is_initialized()):
        return
    hc = HydraConfig.get()
    overrides = [o for o in map(_parse, hc.overrides.task) if not isinstance(o, Exception)]
    groups = [o for o in overrides if group_options(o.key_or_group) is not None]
    values = [
        o for o in overrides
        if o not in groups and o.type != OverrideType.DEL and not o.is_sweep_override()
        and o.key_or_group.split(".")[0].split("/")[0] not in _UNCHECKED_TYPES
    ]
    if not values:
        return
    try:
        from hydra import compose

        defaults = compose(config_name=hc.job.config_name, overrides=[o.input_line for o in groups])
    except Exception:  # the check is a courtesy; the run itself composed, so let it go on
        return
    for o in values:
        key = o.key_or_group
        try:
            default = OmegaConf.select(defaults, key, default=None, throw_on_missing=False)
        except Exception:  # a default that does not resolve here: nothing to compare with
            continue
        kind = _kind(default)
        value = o.value()
        if kind is None or value is None or isinstance(value, str) and "${" in value:
            continue  # anything goes, null, or an interpolation (its target has the type)
        if kind == "a number":
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            fits = isinstance(value, (bool, int))
        if not fits:
            raise RmoptError(f"{key}={value!r}: expected {kind} (the default is {default!r})")


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the project's plain scripts: a bad option or value is one line on stderr and exit 1
    (argparse's own default is the usage text and exit 2)."""

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
