"""Zero-shot evaluation of GPT checkpoints, as Megatron-LM's ``tasks/zeroshot_gpt`` reports its models:
WikiText-103 perplexity (``wikitext``: the detokenizer and the evaluation windows) and LAMBADA last-word
accuracy (``lambada``), scored by ``scoring`` and run from ``tasks/main.py`` through ``task``."""
