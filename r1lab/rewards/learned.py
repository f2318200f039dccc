"""A learned reward: a model with a scalar head (trained by the ``reward_model`` stage) scoring
responses, as DeepSeek-R1's all-scenario RL does for general data (Guo et al. 2025, sec. 2.3.4):
helpfulness is judged on the final summary only, harmlessness on the whole response (``part``).

The model reads the prompt followed by the part of the response it judges, tokenized apart as
the RL stages tokenize them (the prompt with the tokenizer's special tokens, the response
without). The reward is the score head's output at the last real token of the row, wherever the
padding is (``pooling: last``, HF's sequence classification), or the sum of its outputs over
every real token (``pooling: sum``: the head read as token rewards, their return the reward). The
prompt's terms of a sum depend on the prompt alone (the model is causal), so they add the same
constant to every response of a prompt: a pair's order, the Bradley-Terry loss and GRPO's
group-relative advantages do not see it, unless ``max_length`` cuts into the prompt. A model
says which it is by ``reward_pooling`` in its config (absent: ``last``). Training
(r1lab/stages/reward_model.py) and scoring build their inputs with :func:`reward_inputs`
(:func:`encode_reward_input` + :func:`collate_reward_inputs`) and read rewards with
:func:`sequence_rewards`, so a pair scores the same in both.

    scorer = RewardModelScorer("runs/r1/stages/3-rm/model", torch.device("cpu"))
    scorer(prompts, completions, examples)   # -> one float per completion
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import torch

from r1lab.models.io import load_reward_model
from r1lab.settings import Pooling

On = Literal["summary", "full"]
THINK_END = "</think>"


def response_part(completion: str, part: str) -> str:
    """What the reward model judges of ``completion``: with ``part="summary"`` the text after the
    last ``</think>`` (the whole completion when there is none), with ``part="full"`` all of it.

    >>> response_part("<think>2+3=5</think> <answer>5</answer>", "summary")
    ' <answer>5</answer>'
    >>> response_part("<think>a</think> b </think> c", "summary")       # after the last one
    ' c'
    >>> response_part("The answer is 5.", "summary")                    # no think block
    'The answer is 5.'
    >>> response_part("<think>x</think> 5", "full")
    '<think>x</think> 5'
    """
    if part == "full":
        return completion
    if part != "summary":
        raise ValueError(f"part must be 'summary' or 'full', not {part!r}")
    cut = completion.rfind(THINK_END)
    return completion if cut < 0 else completion[cut + len(THINK_END):]


def encode_reward_input(tokenizer, prompt: str, completion: str, *, part: str, max_length: int) -> list[int]:
    """Token ids of prompt + the judged part of the completion; a longer row keeps its last
    ``max_length`` tokens (the end of the response, where the reward is read)."""
    ids = tokenizer(prompt)["input_ids"]
    ids = ids + tokenizer(response_part(completion, part), add_special_tokens=False)["input_ids"]
    return ids[-max_length:]


def collate_reward_inputs(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``position_ids``, each [B, L]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)                 # [B, L]
    mask = torch.zeros((len(rows), width), dtype=torch.long)                       # [B, L]
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)                                        # [B, L]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def reward_inputs(tokenizer, prompts: list[str], completions: list[str], *, part: str,
                  max_length: int) -> dict[str, torch.Tensor]:
    """The reward model's batch for (prompt, completion) rows: the one way train and score build it."""
    rows = [encode_reward_input(tokenizer, p, c, part=part, max_length=max_length) for p, c in zip(prompts, completions)]
    return collate_reward_inputs(rows, tokenizer.pad_token_id)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] position of each row's last real token, for left or right padding.

    >>> last_token_index(torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1]])).tolist()
    [1, 2, 2]
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)  # [L]
    return (positions * (attention_mask != 0)).argmax(-1)                           # [B]


def reward_pooling(model) -> Pooling:
    """How ``model`` turns its head's outputs into a reward: its config's ``reward_pooling``,
    ``last`` when it has none (any HF sequence classifier)."""
    pooling = getattr(model.config, "reward_pooling", "last")
    if pooling not in get_args(Pooling):
        raise ValueError(f"reward_pooling must be {' or '.join(map(repr, get_args(Pooling)))}, not {pooling!r}")
    return pooling


def sequence_rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B] float32 rewards: the score head's output at each row's last real token, or its sum
    over the row's real tokens (:func:`reward_pooling`). Unlike HF's own pooling it never looks
    for the pad id, which may equal EOS: the head's output at every position is caught on its way
    out of the model's own forward (which an FSDP2-sharded model needs to run, to gather its
    weights) and picked here."""
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids")}
    scores = []
    hook = model.score.register_forward_hook(lambda module, args, out: scores.append(out))
    try:
        model(**inputs, use_cache=False)
    finally:
        hook.remove()
    mask = inputs["attention_mask"]
    if reward_pooling(model) == "sum":
        return (scores[0][..., 0].float() * (mask != 0)).sum(-1)                     # [B]
    last = last_token_index(mask)                                                   # [B]
    return scores[0][torch.arange(len(last), device=device), last, 0].float()        # [B]


class RewardModelScorer:
    """A batch scorer ``(prompts, completions, examples) -> rewards`` over a saved reward model
    (the shape of :class:`r1lab.rewards.Scorer`'s ``fn``), run under no_grad in eval mode,
    ``batch_size`` rows per forward."""

    def __init__(self, path: str | Path, device: torch.device, part: On = "summary", batch_size: int = 64,
                 max_length: int = 1024):
        self.model, self.tokenizer = load_reward_model(path, device)
        response_part("", part)                                                     # checks ``part``
        self.part, self.batch_size, self.max_length = part, batch_size, max_length

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], examples: list[dict]) -> list[float]:
        self.model.eval()
        out: list[float] = []
        for i in range(0, len(completions), self.batch_size):
            batch = reward_inputs(self.tokenizer, prompts[i:i + self.batch_size], completions[i:i + self.batch_size],
                                  part=self.part, max_length=self.max_length)
            out += sequence_rewards(self.model, batch).tolist()
        return out


class Rewards(torch.nn.Module):
    """:func:`sequence_rewards` of a reward model as a module's forward: DistributedDataParallel
    exchanges the gradients of forwards run through its wrapper, so the wrapper must run it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sequence_rewards(self.model, batch)                                     # [B]
