"""Loop pieces every stage shares: schedule, optimizer, checkpoints, metrics, progress."""
