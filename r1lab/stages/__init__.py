"""Stages: one module per stage kind, each exporting a typed ``Config`` (a
:class:`r1lab.stages.common.StageConfig`) and ``run(ctx, cfg, out)``.

``STAGES`` is the one place a kind is registered: the config union, the reference checks and
the CLI all derive from it. A new stage is one module plus one entry here.
"""

from r1lab.stages import eval, grpo, ppo, pretrain, rejection_sample, sft

STAGES = {"pretrain": pretrain, "sft": sft, "grpo": grpo, "ppo": ppo, "rejection_sample": rejection_sample, "eval": eval}
