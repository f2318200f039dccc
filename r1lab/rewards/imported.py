"""Rewards from the user's own code, named by import path in a ``rewards:`` spec::

    rewards: {accuracy: 1.0, "my_pkg.my_rewards:brevity": {weight: 0.2, per_token: 0.01}}

The function is batched, like TRL's reward functions: ``fn(prompts, completions, rows, **params)
-> list[float | None]``, one value per completion (``rows``: each completion's task example,
with ``completion_tokens``; None: the reward does not apply to that one, adding nothing to its
total). It is imported and its signature checked when the config is loaded, so a typo or a
wrong signature is one line naming the key, before any stage runs. By default it scores every
example (set ``categories`` to narrow it).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable


def is_import_path(name: str) -> bool:
    return ":" in name


def load(name: str) -> Callable:
    """The function ``module.path:function`` names; ValueError saying what is wrong."""
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ValueError(f"reward {name!r}: cannot import {module!r} ({e})") from None
    except AttributeError:
        raise ValueError(f"reward {name!r}: module {module!r} has no {attr!r}") from None
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {attr!r} is not a function")
    return fn


def check(name: str, params: dict) -> None:
    """Raise ValueError unless ``name`` imports and takes (prompts, completions, rows, **params)."""
    fn = load(name)
    try:
        inspect.signature(fn).bind([], [], [], **params)
    except TypeError as e:
        raise ValueError(f"reward {name!r} must take (prompts, completions, rows"
                         f"{''.join(f', {k}=' for k in params)}): {e}") from None
    except ValueError:                                   # a builtin without a signature: called as is
        pass


def batch_scorer(name: str, params: dict):
    """The user's function as a batch scorer that checks what it returns."""
    fn = load(name)

    def batch(prompts, completions, rows):
        values = list(fn(prompts, completions, rows, **params))
        if len(values) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
        bad = [v for v in values if v is not None and not isinstance(v, (int, float))]
        if bad:
            raise ValueError(f"reward {name!r} returned {bad[0]!r}; expected a number or None per completion")
        return [None if v is None else float(v) for v in values]
    return batch
