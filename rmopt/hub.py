"""Local path or Hugging Face hub name: the one place that decides, for models and data sets alike.

A name that exists locally is loaded from disk; a missing name that looks local (``./x``, ``/x``,
``~/x``, ``a/b/c``, a data file name, or ``a/b`` where ``a`` is a local folder) is an error and never
sent to the hub; anything else is a hub name, asked for only when the hub can be reached (otherwise
read from the local cache, or an error at once). ``rmopt.models`` and ``rmopt.data.sources`` both
build on these helpers.
"""

from __future__ import annotations

import functools
import os
import socket

from rmopt.errors import RmoptError

# data file extensions the loaders read, and the `datasets` builder for each
DATA_FILE_KINDS = {"json": "json", "jsonl": "json", "parquet": "parquet", "csv": "csv"}


@functools.cache
def hub_reachable(host: str = "huggingface.co") -> bool:
    """Whether the hub can be asked at all (offline mode or no DNS answers no at once, not after retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def data_file_kind(path: str) -> str | None:
    """The `datasets` builder for a data file name (``json``, ``parquet``, ``csv``), or None."""
    name = os.path.basename(str(path))
    return DATA_FILE_KINDS.get(name.rsplit(".", 1)[-1].lower()) if "." in name else None


def looks_like_local_path(path: str) -> bool:
    """Whether a name that does not exist was meant as a local path rather than a hub name (``owner/name``)."""
    if path.startswith((".", "/", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path:
        return True
    if data_file_kind(path) is not None:
        return True  # a data file name (hub names have no extension)
    first = path.split("/", 1)[0]
    return "/" in path and os.path.isdir(first)


def from_pretrained(loader, name_or_path: str, what: str, **kwargs):
    """``loader(name_or_path)`` from a local folder or the hub, turning hub/path failures into one clear line.

    An existing folder is loaded as is; a missing path that looks local is an error; anything else is
    a hub name, read from the local cache only (no network, no retries) when the hub is unreachable.
    """
    name_or_path = str(name_or_path)
    expanded = os.path.expanduser(name_or_path)
    local = os.path.isdir(expanded)
    if not local and looks_like_local_path(name_or_path):
        raise RmoptError(f"{what} path {name_or_path!r} does not exist")
    if local:
        name_or_path = expanded
    elif not hub_reachable():
        kwargs["local_files_only"] = True  # use the local cache if it has the model; fail at once if not
    try:
        return loader(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        if local:
            raise RmoptError(
                f"cannot load {what} from folder {name_or_path!r}: {str(e).splitlines()[0]}"
            ) from e
        raise RmoptError(
            f"{what} {name_or_path!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"(offline or unknown name); download it where the hub is reachable or pass a local folder"
        ) from e


def hub_snapshot(name: str, revision: str | None, patterns: list[str]) -> str:
    """A local copy (the hub cache's snapshot folder) of a data set repository's files matching ``patterns``.

    Offline (or with the hub unreachable) only what the cache already holds is used. Returns the
    folder, laid out as the repository is at ``revision`` (None: main).
    """
    from huggingface_hub import snapshot_download

    return snapshot_download(
        repo_id=name,
        repo_type="dataset",
        revision=revision,
        allow_patterns=patterns,
        local_files_only=not hub_reachable(),
    )
