"""Ray Train glue: the trainer (its torch process group set up in the workers), the per-worker entry point, and the
job driver."""
