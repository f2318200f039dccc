"""Stages: one module per stage kind, each with a typed config and ``run(ctx, cfg, out_dir)``."""
