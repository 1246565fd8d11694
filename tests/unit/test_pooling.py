"""Sentence pooling ignores padding exactly as sentence-transformers does."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.embeddings import l2_normalize, pool

HIDDEN = np.array(
    [
        [[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],  # last position is padding
        [[0.0, 1.0], [2.0, -1.0], [4.0, 3.0]],
    ],
    dtype=np.float32,
)
MASK = np.array([[1, 1, 0], [1, 1, 1]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("mean", [[2.0, 3.0], [2.0, 1.0]]),
        ("cls", [[1.0, 2.0], [0.0, 1.0]]),
        ("max", [[3.0, 4.0], [4.0, 3.0]]),
        ("last", [[3.0, 4.0], [4.0, 3.0]]),
    ],
)
def test_pool_modes_ignore_padding(mode, expected):
    np.testing.assert_allclose(pool(HIDDEN, MASK, mode), expected)


def test_unknown_mode():
    with pytest.raises(ValueError):
        pool(HIDDEN, MASK, "median")


def test_l2_normalize_is_unit_length_and_safe_on_zero():
    vectors = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [0.0, 0.0]])
