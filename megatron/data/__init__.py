"""Data pipeline: text -> token files -> fixed-length GPT samples -> per-rank micro-batches.

``tokenizer`` (text <-> ids), ``indexed_dataset`` (the Megatron ``.bin``/``.idx`` token files),
``sample_index`` and ``gpt_dataset`` (samples of ``seq_length + 1`` tokens, splits, cached indices),
``blended_dataset`` (several corpora by weight) and ``samplers`` (the samples each data-parallel rank reads).
Modules are imported directly rather than re-exported here, so that preprocessing never pays for torch.
"""
