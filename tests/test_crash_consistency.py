"""``r1lab run`` killed with SIGKILL at random moments (one of them inside a write) and
run again ends with the unbroken run's weights and eval results, and nothing the kill left is
taken as complete (tests/crash_consistency.py; its 20-trial run is the figure in docs/reliability.md)."""

import pytest

from crash_consistency import trials


@pytest.mark.slow
def test_runs_killed_at_random_resume_to_the_unbroken_results(tmp_path):
    done = trials(tmp_path, 2, seed=0, log=lambda *_: None)
    assert done[0]["killed"].startswith("at ") and done[1]["killed"].startswith("inside write"), done
    assert all(d["left_complete_but_broken"] == [] for d in done)
    assert all(d["same_as_unbroken"] for d in done)
