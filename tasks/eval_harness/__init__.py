"""lm-evaluation-harness tasks on a checkpoint (Megatron-DeepSpeed's ``tasks/eval_harness``); the logic is
``megatron.evaluation.harness`` and ``megatron.evaluation.harness_run``."""
