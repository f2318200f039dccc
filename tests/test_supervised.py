"""The pieces the supervised stages share: the held-out split and when to validate."""

from pathlib import Path

import pytest

from r1lab.errors import DataError
from r1lab.train.supervised import should_validate, split_rows


def test_split_holds_out_the_share_asked_in_file_order_and_always_leaves_a_row():
    rows = list(range(40))
    train, val = split_rows(rows, 0.1, "sft-val-0", Path("d.jsonl"))
    assert len(val) == 4 and sorted(train + val) == rows          # ceil(0.1 * 40), disjoint, all rows
    assert train == sorted(train) and val == sorted(val)          # file order
    assert split_rows(rows, 0.1, "sft-val-0", Path("d.jsonl")) == (train, val)
    assert split_rows(rows, 0.1, "sft-val-1", Path("d.jsonl")) != (train, val)   # the key names the draw
    assert split_rows(rows, 0.0, "k", Path("d.jsonl")) == (rows, [])
    assert len(split_rows(rows, 0.99, "k", Path("d.jsonl"))[0]) == 1
    with pytest.raises(DataError, match="d.jsonl: no rows"):
        split_rows([], 0.1, "k", Path("d.jsonl"))


def test_validation_every_n_steps_and_at_the_end():
    assert [s for s in range(10) if should_validate(s, 10, 4)] == [3, 7, 9]
    assert [s for s in range(8) if should_validate(s, 8, 4)] == [3, 7]
