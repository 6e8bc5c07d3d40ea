"""tools/train_sentencepiece.py: a LLaMA-style model that the SentencePiece tokenizer types load."""

from __future__ import annotations

import json

from sentencepiece import SentencePieceProcessor

from megatron.data.tokenizer import build_tokenizer
from tools.train_sentencepiece import main as train


def test_trains_a_model_the_tokenizers_load(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    lines = [f"In the beginning {n} was the word, and the word was {n * 7}." for n in range(300)]
    corpus.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    model = train(["--input", str(corpus), "--model-prefix", str(tmp_path / "sp"), "--vocab-size", "300",
                   "--workers", "1"])  # fmt: skip
    reference = SentencePieceProcessor(model_file=model)
    assert (reference.unk_id(), reference.bos_id(), reference.eos_id(), reference.pad_id()) == (0, 1, 2, -1)
    tokenizer = build_tokenizer("Llama2Tokenizer", None, None, model)
    text = "the word was 12345 ¿"  # digits split one by one; the unseen character through byte fallback
    assert tokenizer.tokenize(text) == [1, *reference.encode(text)]
    assert any(reference.id_to_piece(i).startswith("<0x") for i in reference.encode(text))
    assert tokenizer.eod == 2 and tokenizer.vocab_size == 300
