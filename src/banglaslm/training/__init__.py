"""Training: the loop, the optimizer and schedule, the update guard, data parallelism (DDP, FSDP) and metrics."""
