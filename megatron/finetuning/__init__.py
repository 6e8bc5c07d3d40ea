"""BERT finetuning (Megatron-LM's ``tasks/``): GLUE MNLI and QQP classification, RACE multiple choice."""
