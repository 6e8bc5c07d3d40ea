"""Megatron-LM's zero-shot GPT tasks (WIKITEXT103, LAMBADA); the logic is ``megatron.evaluation``."""

from megatron.evaluation.task import ZEROSHOT_TASKS, add_task_flags, run_zeroshot

__all__ = ["ZEROSHOT_TASKS", "add_task_flags", "run_zeroshot"]
