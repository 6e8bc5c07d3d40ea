"""The training run: DeepSpeed engine construction, the step, schedules, logging and evaluation."""
