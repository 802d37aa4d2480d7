"""Ray Train glue: TorchTrainer construction, the per-worker entry point, and the job driver."""
