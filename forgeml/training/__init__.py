"""Training: the loop, its optimizers/schedules/losses, and the runtime (device, precision, seeds)."""
