"""Evaluation metrics: pass@k against brute-force enumeration, vote keys, the tie rule, and
pass@1 / cons@k / pass@k over hand-worked groups of samples."""

from fractions import Fraction
from itertools import combinations
from math import comb

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.metrics import (answer_key, cons_at_k, majority_vote, mean_pass_at_1,
                                mean_pass_at_k, pass_at_k)


def rec(answer, correct):
    return {"answer": answer, "correct": correct}


# ---- pass_at_k ---------------------------------------------------------------------------------


def brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (the first c correct) that hold a correct sample."""
    samples = [True] * c + [False] * (n - c)
    hits = sum(any(subset) for subset in combinations(samples, k))
    return Fraction(hits, comb(n, k))


def test_pass_at_k_matches_enumeration_of_all_subsets():
    cases = 0
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(brute_pass_at_k(n, c, k)),
                                                           abs=1e-12), (n, c, k)
                cases += 1
    assert cases == sum(n * (n + 1) for n in range(1, 9))   # 240: none skipped


def test_pass_at_1_is_share_correct():
    for n in range(1, 12):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(5, 0, 3) == 0.0                    # nothing correct
    assert pass_at_k(5, 5, 1) == 1.0                    # everything correct
    assert pass_at_k(5, 3, 3) == 1.0                    # n - c = 2 < k = 3: always a hit
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)   # C(3,3)/C(5,3) = 1/10
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(6, 2, 6) == 1.0                    # k = n: the one subset is all samples


@pytest.mark.parametrize("n, c, k", [(3, 1, 4), (3, 1, 0), (3, 1, -1), (3, 4, 2), (3, -1, 2),
                                     (0, 0, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ---- answer_key and majority_vote --------------------------------------------------------------


def test_answer_key_merges_equal_numbers():
    assert answer_key("15") == answer_key("15.0") == answer_key(" 15 ") == answer_key("15.") == "15"
    assert answer_key("1,500") == answer_key("1500.00") == "1500"
    assert answer_key("+3.50") == answer_key("3.5") == "3.5"
    assert answer_key("-0.05") == "-0.05" and answer_key("-0") == answer_key("0") == "0"
    assert answer_key("0.010") == "0.01"
    assert answer_key("15") != answer_key("16")


def test_answer_key_text_and_none():
    assert answer_key("  x  =\n 3 ") == answer_key("x = 3") == "x = 3"
    assert answer_key("Paris") != answer_key("paris")   # only whitespace is normalised
    assert answer_key(None) is None
    assert answer_key("") is None and answer_key(" \n ") is None
    # parse_number does not read "1/2", so it stays text and does not vote with 0.5's key
    assert answer_key("1/2") == "1/2" and answer_key("0.5") == "0.5"


def test_majority_vote_clear_majority():
    assert majority_vote(["3", "7", "7", "2", "7"]) == 1


def test_majority_vote_tie_goes_to_first_appearing_key():
    assert majority_vote(["5", "7", "7", "5"]) == 0
    assert majority_vote(["7", "5", "5", "7"]) == 0
    assert majority_vote(["1", "7", "5", "5", "7"]) == 1   # "7" seen before "5"


def test_majority_vote_tie_with_leading_none():
    assert majority_vote([None, "5", "7", "7", "5", None]) == 1
    assert majority_vote([None, None, "4"]) == 2            # None casts no vote, even 2 of them


def test_majority_vote_all_none():
    assert majority_vote([None, None, None]) is None
    assert majority_vote([]) is None


def test_majority_vote_merges_numeric_keys():
    answers = ["8", "15", "15.0", " 15 ", "8."]
    assert majority_vote(answers) == 0                         # raw: all differ, first wins
    assert majority_vote([answer_key(a) for a in answers]) == 1  # 15 three times, 8 twice


# ---- metrics over groups -----------------------------------------------------------------------

GROUPS = [
    # q1: "42" x3 (right), "41" x1 -> pass@1 3/4, vote "42" right, pass@2 1
    [rec("42", 1.0), rec("41", 0.0), rec("42.0", 1.0), rec(" 42 ", 1.0)],
    # q2: "7" x2 (wrong), "9" x1 (right), None -> pass@1 1/4, vote "7" wrong,
    #     pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2
    [rec("7", 0.0), rec("9", 1.0), rec(None, 0.0), rec("7", 0.0)],
    # q3: tie "5" x2 (wrong, seen first) vs "6" x2 (right) -> pass@1 1/2, vote "5" wrong,
    #     pass@2 = 1 - C(2,2)/C(4,2) = 5/6
    [rec("5", 0.0), rec("6", 1.0), rec("6", 1.0), rec("5", 0.0)],
    # q4: no parsable answer at all -> pass@1 0, no vote (wrong), pass@2 0
    [rec(None, 0.0), rec(None, 0.0), rec(None, 0.0), rec(None, 0.0)],
]


def test_mean_pass_at_1_hand_worked():
    # (3/4 + 1/4 + 1/2 + 0) / 4 = 3/8
    assert mean_pass_at_1(GROUPS) == pytest.approx(3 / 8)
    assert mean_pass_at_1([[rec("1", 1.0)], [rec("1", 0.0), rec("2", 1.0)]]) == pytest.approx(0.75)


def test_cons_at_k_hand_worked():
    # only q1's vote is right: 1/4
    assert cons_at_k(GROUPS) == pytest.approx(1 / 4)
    assert cons_at_k(GROUPS[:1]) == 1.0


def test_cons_at_k_tie_won_by_wrong_first_answer():
    # "5" and "6" have two votes each; "5" appears first and is wrong
    assert cons_at_k([GROUPS[2]]) == 0.0
    # the same samples with "6" first: the tie now goes to the right answer
    assert cons_at_k([GROUPS[2][1:] + GROUPS[2][:1]]) == 1.0


def test_cons_at_k_tie_with_leading_none_and_no_vote():
    group = [rec(None, 0.0), rec("3", 1.0), rec("4", 0.0)]   # 1-1 tie after the None: "3" wins
    assert cons_at_k([group]) == 1.0
    assert cons_at_k([GROUPS[3]]) == 0.0                    # nobody voted: wrong


def test_mean_pass_at_k_hand_worked():
    assert mean_pass_at_k(GROUPS, 1) == pytest.approx(3 / 8)
    # (1 + 1/2 + 5/6 + 0) / 4 = 7/12
    assert mean_pass_at_k(GROUPS, 2) == pytest.approx(7 / 12)
    # k = 4 = n: any correct sample is a hit: (1 + 1 + 1 + 0) / 4
    assert mean_pass_at_k(GROUPS, 4) == pytest.approx(3 / 4)
    with pytest.raises(ValueError):
        mean_pass_at_k(GROUPS, 5)


def test_metrics_reject_empty_and_non_binary_input():
    for metric in (mean_pass_at_1, cons_at_k, lambda g: mean_pass_at_k(g, 1)):
        with pytest.raises(ValueError):
            metric([])
        with pytest.raises(ValueError):
            metric([[rec("1", 1.0)], []])
        with pytest.raises(ValueError):   # a summed reward (accuracy + format) is not correctness
            metric([[rec("1", 1.2)]])


@st.composite
def random_groups(draw):
    size = draw(st.integers(1, 8))   # samples per question, the same for all as in an eval
    record = st.builds(rec, st.sampled_from([None, "1", "2", "2.0", "x"]),
                       st.sampled_from([0.0, 1.0]))
    return draw(st.lists(st.lists(record, min_size=size, max_size=size), min_size=1, max_size=6))


@settings(max_examples=200, deadline=None)
@given(random_groups())
def test_pass_at_k_of_1_is_pass_at_1_and_rises_with_k(groups):
    assert mean_pass_at_k(groups, 1) == pytest.approx(mean_pass_at_1(groups), abs=1e-12)
    values = [mean_pass_at_k(groups, k) for k in range(1, len(groups[0]) + 1)]
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))
    # at k = n a question scores 1 exactly when any of its samples is correct
    any_right = sum(any(r["correct"] for r in g) for g in groups) / len(groups)
    assert values[-1] == pytest.approx(any_right)
