"""Megatron-LM's downstream tasks, run through ``tasks/main.py``."""
