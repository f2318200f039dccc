"""Losses: pure functions of tensors that return ``(loss, stats)``; stats are detached floats."""
