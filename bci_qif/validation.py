"""Argument checks shared by bci_qif's modules."""

from __future__ import annotations

import numpy as np

__all__ = ["is_integer"]


def is_integer(value) -> bool:
    """Whether ``value`` is a Python or NumPy integer.

    Booleans are refused although Python counts them as integers: ``epochs=True`` is
    a mistake, not one epoch.

    Parameters
    ----------
    value : object

    Returns
    -------
    bool
    """
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
