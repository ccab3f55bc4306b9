"""Exception classes raised by bci_qif.

Every error subclasses :class:`ValueError` (like scikit-learn and MNE do for bad
input), so callers that already catch ``ValueError`` keep working, while callers
that want to tell bad data from a bad configuration can catch the specific class.
Messages name the file, channel or value at fault and say what to do.
"""

from __future__ import annotations

__all__ = [
    "EventBudgetError",
    "BCIQIFError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "CorruptFileError",
    "ChannelError",
    "SamplingRateError",
]


class BCIQIFError(Exception):
    """Base class of every exception raised on purpose by bci_qif."""


class ConfigError(BCIQIFError, ValueError):
    """A configuration (preprocessing, dataset or task) is invalid.

    Raised for unknown keys, values of the wrong type or outside their range,
    and combinations that cannot work together.
    """


class DataError(BCIQIFError, ValueError):
    """Recorded data cannot be used as it is (content, layout or values)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data root, dataset file or run is missing.

    Also a :class:`FileNotFoundError`, so generic file handling catches it.
    """


class CorruptFileError(DataError):
    """A file exists but cannot be read: truncated, corrupt or of the wrong format."""


class ChannelError(DataError):
    """Channels that are required are missing, or channel sets do not match."""


class SamplingRateError(DataError):
    """Sampling rates are wrong for the requested processing or cannot be reconciled."""


class EventBudgetError(BCIQIFError, RuntimeError):
    """A spiking simulation needed more spikes than its event budget allows.

    Raised when firing runs away (e.g. LIF neurons, which have no refractoriness,
    driven by a large current): the budget grows automatically up to a cap, and
    beyond it the network is considered broken rather than recompiled forever.
    """
