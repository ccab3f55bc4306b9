"""Safe, atomic checkpoints: one ``.npz`` file of arrays plus JSON metadata.

No pickle anywhere: arrays are stored with ``allow_pickle=False`` and the metadata
is JSON text kept inside the same file as a ``uint8`` array, so one
``os.replace`` publishes arrays and metadata together. An interrupted write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_META_KEY = "__meta_json__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or of an unknown format."""


def save_checkpoint(path, arrays, meta):
    """Write ``arrays`` and ``meta`` to ``path`` atomically.

    Parameters
    ----------
    path : str or Path
        Target file (``.npz``).
    arrays : dict of str -> array_like
        Numeric arrays (object arrays are refused).
    meta : dict
        JSON-serialisable metadata.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.dtype == object:
            raise TypeError(f"array {key!r} has dtype object; checkpoints hold numeric arrays only")
        payload[key] = value
    meta = dict(meta, format_version=FORMAT_VERSION)
    payload[_META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    arrays : dict of str -> numpy.ndarray
    meta : dict

    Raises
    ------
    CheckpointError
        If the file is missing, truncated, not a checkpoint, or of a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({err}); it may be truncated") from err
    if _META_KEY not in arrays:
        raise CheckpointError(f"{path} has no metadata: not a bci_qif checkpoint")
    try:
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt metadata ({err})") from err
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this bci_qif reads {FORMAT_VERSION}")
    return arrays, meta
