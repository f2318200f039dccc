"""reasoning-gym (PyPI ``reasoning-gym``): procedural reasoning tasks, each with its own scorer.

A dataset ``name`` with keyword ``config`` gives entry ``i`` of seed ``s`` from ``Random(s + i)``
(``{question, answer, metadata}``), and scores a reply with ``score_answer(reply, entry)``. The
task (r1lab/data/tasks.py, kind ``reasoning_gym``) draws its held-out entries from seeds past
every training index, so the two splits come from disjoint random streams, and drops from
training any question the held-out split also asks (small tasks repeat questions).
"""

from __future__ import annotations

import json
import random
from functools import lru_cache

INSTALL = "pip install reasoning-gym==0.1.25"
TRAIN_INDICES = 1 << 30          # training entries of a dataset: seeds s .. s + 2**30 - 1; held out: above


def missing() -> str | None:
    """Why reasoning-gym cannot be used here, or None."""
    import importlib.util
    return None if importlib.util.find_spec("reasoning_gym") else f"reasoning-gym is not installed ({INSTALL})"


@lru_cache(maxsize=64)
def _dataset(name: str, config_json: str, seed: int):
    import reasoning_gym
    return reasoning_gym.create_dataset(name, seed=seed, size=TRAIN_INDICES, **json.loads(config_json))


def dataset(name: str, config: dict, seed: int = 0):
    """The procedural dataset ``name`` under ``config`` (entries are drawn by index, not stored)."""
    return _dataset(name, json.dumps(config, sort_keys=True), seed)


def config_problem(name: str, config: dict) -> str | None:
    """Why ``name`` with ``config`` is not a reasoning-gym dataset, or None."""
    try:
        dataset(name, config)
    except (ValueError, TypeError, AssertionError) as e:
        return f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return None


def entry(name: str, config: dict, seed: int, index: int) -> dict:
    """Entry ``index`` of the dataset as a task example: question, answer, the dataset's metadata,
    and what scoring it needs (``rg_dataset``, ``rg_config``)."""
    item = dataset(name, config, seed)[index]
    return {"question": item["question"], "answer": str(item["answer"]), "metadata": _plain(item["metadata"]),
            "rg_dataset": name, "rg_config": config}


def score(reply: str, example: dict) -> float:
    """The example's own dataset's ``score_answer`` of ``reply`` (in [0, 1])."""
    scorer = dataset(example["rg_dataset"], example["rg_config"])
    item = {"question": example["question"], "answer": example["answer"], "metadata": example["metadata"]}
    return float(scorer.score_answer(reply, item))


def weighted_counts(weights: dict[str, float], n: int) -> dict[str, int]:
    """``n`` split among the names in proportion to their weights (largest remainders)."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def draw_names(weights: dict[str, float], rng: random.Random, n: int) -> list[str]:
    names = list(weights)
    return rng.choices(names, weights=[weights[k] for k in names], k=n)


def _plain(value):
    """Metadata as JSON keeps it (tuples as lists), so a row written and read back scores the same."""
    return json.loads(json.dumps(value, default=str))
