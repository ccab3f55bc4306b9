"""On-disk cache of preprocessed trial sets.

An entry is keyed by a SHA-256 hash of the identities of the source files
(name, size, modification time) and of a JSON description of everything that
shapes the output (preprocessing config, task, subject, versions). It is stored
as two files, ``<key>.npz`` (arrays, read back with ``allow_pickle=False``) and
``<key>.json`` (metadata), each written to a temporary file in the cache
directory and moved into place with :func:`os.replace`, so a reader never sees
half a file.

The directory is, in order of precedence: an explicit path, the environment
variable ``BCI_QIF_CACHE``, ``$XDG_CACHE_HOME/bci_qif``, ``~/.cache/bci_qif``.
Data folders are never written to: if the cache directory cannot be written
(for instance a read-only CI copy), loading goes on without caching.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .trials import TrialSet

__all__ = [
    "CACHE_ENV",
    "FORMAT_VERSION",
    "TrialCache",
    "cache_key",
    "default_cache_dir",
    "file_identity",
    "resolve_cache",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "BCI_QIF_CACHE"
#: Bump when the stored layout or the preprocessing code changes its output.
FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """Cache directory from ``BCI_QIF_CACHE``, else the user cache directory.

    Returns
    -------
    Path
        ``$BCI_QIF_CACHE`` if set, else ``$XDG_CACHE_HOME/bci_qif``, else
        ``~/.cache/bci_qif``. The directory is created on first write only.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bci_qif"


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Identity of a source file for cache keys: name, size and mtime.

    Parameters
    ----------
    path : path-like
        An existing file.

    Returns
    -------
    dict
        ``{"name": "<parent>/<file>", "size": bytes, "mtime_ns": int}``. The
        absolute location is left out, so moving a data folder keeps the key
        only if the copy kept the modification times; a changed file gets a
        new key.
    """
    path = Path(path)
    st = path.stat()
    return {
        "name": f"{path.parent.name}/{path.name}",
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


def cache_key(files: Iterable[str | os.PathLike], params: dict) -> str:
    """Hash file identities and a JSON-serialisable parameter dict into a key.

    Parameters
    ----------
    files : iterable of path-like
        Source files the entry is computed from (order matters).
    params : dict
        Everything else that shapes the output (config, task, subject, ...).

    Returns
    -------
    str
        40 hexadecimal characters.
    """
    import mne

    payload = {
        "format": FORMAT_VERSION,
        "mne": mne.__version__,
        "numpy": np.__version__.split(".")[0],
        "files": [file_identity(f) for f in files],
        "params": params,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _write_atomic(directory: Path, final: Path, write) -> None:
    """Write through ``write(fileobj)`` into a temp file, then os.replace it."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=final.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class TrialCache:
    """A directory of cached :class:`~bci_qif.trials.TrialSet` entries.

    Parameters
    ----------
    directory : path-like | None
        Where entries live; ``None`` uses :func:`default_cache_dir`.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        if directory is None:
            self.directory = default_cache_dir()
        else:
            self.directory = Path(directory).expanduser()

    def __repr__(self) -> str:
        return f"TrialCache({str(self.directory)!r})"

    def paths(self, key: str) -> tuple[Path, Path]:
        """The ``.npz`` and ``.json`` paths of an entry."""
        return self.directory / f"{key}.npz", self.directory / f"{key}.json"

    def load(self, key: str) -> TrialSet | None:
        """Return the cached set for ``key``, or None when absent or unreadable.

        A damaged entry is logged and treated as a miss (it is overwritten by
        the next :meth:`save`), so a broken cache never blocks loading data.
        """
        npz_path, json_path = self.paths(key)
        if not (npz_path.is_file() and json_path.is_file()):
            return None
        try:
            meta = json.loads(json_path.read_text())
            if meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
                logger.info("Cache entry %s has another format or key; ignoring it.", json_path)
                return None
            with np.load(npz_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            return TrialSet.from_arrays(arrays, meta["trials"])
        except Exception as err:  # corrupt entry: fall back to recomputing
            logger.warning("Ignoring unreadable cache entry %s (%s).", npz_path, err)
            return None

    def save(self, key: str, trials: TrialSet, info: dict | None = None) -> Path | None:
        """Store ``trials`` under ``key``; return the ``.npz`` path (None if not writable).

        Parameters
        ----------
        key : str
            From :func:`cache_key`.
        trials : TrialSet
            The set to store.
        info : dict | None
            Extra JSON-serialisable metadata (e.g. source files) kept beside it.
        """
        npz_path, json_path = self.paths(key)
        arrays, meta = trials.to_arrays()
        record = {"format": FORMAT_VERSION, "key": key, "trials": meta, "info": info or {}}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.directory, npz_path, lambda fh: np.savez(fh, **arrays))
            # The JSON goes last: an entry counts only once both files are in place.
            _write_atomic(
                self.directory, json_path, lambda fh: fh.write(json.dumps(record).encode())
            )
        except OSError as err:
            logger.warning(
                "Cannot write the cache at %s (%s); continuing without caching. Set %s to a "
                "writable folder.",
                self.directory,
                err,
                CACHE_ENV,
            )
            return None
        return npz_path

    def clear(self) -> int:
        """Delete every entry in the directory; return how many files were removed."""
        removed = 0
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.suffix in (".npz", ".json") and len(path.stem) == 40:
                    path.unlink()
                    removed += 1
        return removed


def resolve_cache(cache: bool | str | os.PathLike | TrialCache | None) -> TrialCache | None:
    """Turn a loader's ``cache`` argument into a :class:`TrialCache` or None.

    Parameters
    ----------
    cache : bool | path-like | TrialCache | None
        ``True``: the default directory; ``False``/``None``: no caching; a path:
        that directory; a TrialCache: used as is.
    """
    if cache is None or cache is False:
        return None
    if cache is True:
        return TrialCache()
    if isinstance(cache, TrialCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return TrialCache(cache)
    raise ConfigError(
        f"cache must be True, False, a directory path or a TrialCache, got {cache!r}."
    )
