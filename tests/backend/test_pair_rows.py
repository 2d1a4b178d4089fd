"""pair_rows: a row's evens and odds apart and back, at every length around the 32-element blocks."""

import numpy as np
import pytest

from neuronet.backend.pair_rows import merge_pairs, split_pairs


@pytest.mark.parametrize("n", [1, 2, 3, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100])
def test_split_and_merge_pairs(n):
    source = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    into = np.full(300, -1.0, np.float32)
    split_pairs(source, into, 3, 150)
    evens, odds = (n + 1) // 2, n // 2
    expected = np.full(300, -1.0, np.float32)
    expected[3:3 + evens], expected[150:150 + odds] = source[0::2], source[1::2]
    np.testing.assert_array_equal(into, expected)  # the halves, and nothing written around them

    back = np.full(n + 40, -2.0, np.float32)
    merge_pairs(into, 3, 150, back[:n])
    np.testing.assert_array_equal(back[:n], source)
    assert (back[n:] == -2.0).all()
