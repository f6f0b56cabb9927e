"""The sampled batch size is the effective batch: micro-batch x accumulation, exactly."""

import pytest

from trainers.hf_loop import split_batch


@pytest.mark.parametrize(
    ("effective", "max_micro", "expected"),
    [
        (48, 32, (24, 2)),  # 32 does not divide 48: the largest divisor <= 32 is 24
        (16, 32, (16, 1)),  # fits: no accumulation
        (7, 4, (1, 7)),  # a prime above the cap falls back to micro-batch 1
        (64, 32, (32, 2)),
        (12, 5, (4, 3)),
    ],
)
def test_split_batch(effective, max_micro, expected):
    micro, accumulation = split_batch(effective, max_micro)
    assert (micro, accumulation) == expected
    assert micro * accumulation == effective and micro <= max_micro
