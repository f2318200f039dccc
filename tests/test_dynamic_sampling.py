"""DAPO dynamic sampling: groups whose correctness is all equal are dropped and refilled from
further draws; the filter reads the verifier's 0/1, never the shaped total."""

import pytest
import torch

from r1lab.forward import prompt_completion_batch
from r1lab.stages.grpo import GrpoConfig, refill
from r1lab.train.rl_step import ScoredRollout, informative_groups, select_groups

G, PAD = 2, 0


def rollout(correct: list[bool], shaped: float = 0.0, tag: int = 1) -> ScoredRollout:
    """Groups of G rows; row i's prompt is [tag, i + 1] and its completion i + 1 tokens of tag."""
    n = len(correct)
    ids = torch.zeros(n, n, dtype=torch.long)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        ids[i, :i + 1], mask[i, :i + 1] = tag, True
    batch = prompt_completion_batch([[tag, i + 1] for i in range(n)], ids, mask, PAD)
    rewards = torch.tensor([float(c) + shaped for c in correct])
    return ScoredRollout(batch, rewards, {"accuracy": sum(correct) / n}, int(mask.sum()), 1.0,
                         torch.tensor([i % 2 == 1 for i in range(n)]), list(correct))


def cfg(prompts: int, max_draws: int) -> GrpoConfig:
    return GrpoConfig(kind="grpo", name="g", init="m", prompts_per_step=prompts, group_size=G,
                      dynamic_sampling={"max_draws": max_draws})


def test_groups_all_right_or_all_wrong_are_not_informative():
    scored = rollout([True, True, False, False, True, False, False, True])
    assert informative_groups(scored, G) == [2, 3]
    general = rollout([True, True])
    general.correct = [None, None]                                               # no verifier: kept
    assert informative_groups(general, G) == [0]


def test_the_filter_reads_correctness_not_the_shaped_total():
    # every completion wrong, but a shaped reward (format, length) spreads the totals: still dropped
    scored = rollout([False, False, False, False])
    scored.rewards = torch.tensor([0.5, 0.0, -0.3, 0.2])
    assert informative_groups(scored, G) == []


def test_refill_draws_until_the_batch_is_full_and_counts_the_draws():
    draws = {1: rollout([True, False, True, True], tag=2), 2: rollout([False, True, True, False], tag=3)}
    asked = []

    def draw(i):
        asked.append(i)
        return draws[i]
    first = rollout([True, True, False, True, False, False])                    # one informative group of 3
    scored, logged = refill(first, draw, cfg(prompts=3, max_draws=5), PAD)
    assert asked == [1, 2]                                                       # stopped once 3 groups were kept
    assert logged == {"dynamic/kept_share": 4 / 9, "dynamic/draws": 3, "dynamic/groups": 3}
    assert scored.correct == [False, True, True, False, False, True]             # draw 0 g1, draw 1 g0, draw 2 g0
    assert scored.rewards.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert scored.n_tokens == first.n_tokens + draws[1].n_tokens + draws[2].n_tokens and scored.rollout_s == 3.0
    assert scored.metrics == first.metrics                                       # the policy's own, unfiltered


def test_refill_stops_at_max_draws_and_trains_on_what_it_kept():
    scored, logged = refill(rollout([True, False, True, True]), lambda i: rollout([False] * 4), cfg(3, 2), PAD)
    assert logged == {"dynamic/kept_share": 1 / 6, "dynamic/draws": 2, "dynamic/groups": 1}
    assert scored.correct == [True, False]
    nothing, logged = refill(rollout([True] * 4), lambda i: rollout([False] * 4), cfg(2, 2), PAD)
    assert logged["dynamic/kept_share"] == 0 and nothing.correct == [True] * 4     # none kept: the first draw as drawn


def test_selected_groups_keep_each_row_token_for_token():
    a, b = rollout([True, False, False, True]), rollout([False, True], tag=5)
    merged = select_groups([a, b], [(1, 0), (0, 1)], G, PAD)
    expect = [(b, 0), (b, 1), (a, 2), (a, 3)]
    for row, (source, r) in enumerate(expect):
        for key in ("input_ids", "completion_mask"):
            got, want = merged.batch[key][row], source.batch[key][r]
            keep = merged.batch["attention_mask"][row].bool() if key == "input_ids" else slice(None)
            want_keep = source.batch["attention_mask"][r].bool() if key == "input_ids" else slice(None)
            assert got[keep][:len(want[want_keep])].tolist() == want[want_keep].tolist()
    assert merged.truncated.tolist() == [False, True, False, True]
    assert merged.batch["position_ids"].shape == merged.batch["input_ids"].shape


def test_dynamic_sampling_and_general_prompts_are_refused_together():
    from r1lab.data.tasks import ArithmeticTask
    c = GrpoConfig(kind="grpo", name="g", init="m", prompts_per_step=4, general_prompts=1,
                   dynamic_sampling={"max_draws": 2})
    assert "dynamic_sampling" in c.task_problem(ArithmeticTask(kind="arithmetic"))
