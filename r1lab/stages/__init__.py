"""Stages: one module per stage kind, each exporting a typed ``Config`` (a
:class:`r1lab.stages.common.StageConfig`), ``run(ctx, cfg, out)``, and ``memory(cfg, plan)``:
the bytes it expects to hold in each phase, for ``r1lab run --plan`` (r1lab/plan.py).

``STAGES`` is the one place a kind is registered: the config union, the reference checks and
the CLI all derive from it. A new stage is one module plus one entry here.
"""

from r1lab.stages import distill, dpo, eval, grpo, ppo, preference_pairs, pretrain, rejection_sample, reward_model, sft

STAGES = {"pretrain": pretrain, "sft": sft, "grpo": grpo, "ppo": ppo, "rejection_sample": rejection_sample,
          "preference_pairs": preference_pairs, "reward_model": reward_model, "dpo": dpo, "distill": distill,
          "eval": eval}
