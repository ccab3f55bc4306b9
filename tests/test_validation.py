"""The shared integer check: Python and NumPy integers pass, booleans and everything else do not."""

import numpy as np
import pytest

from bci_qif.validation import is_integer


@pytest.mark.parametrize("value", [0, -3, 7, np.int64(5), np.int32(-1), np.uint8(2)])
def test_integers_pass(value):
    assert is_integer(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 1.0, np.float64(2.0), "3", None, [1], np.array(1)])
def test_everything_else_fails(value):
    assert not is_integer(value)
