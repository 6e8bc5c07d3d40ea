"""BertWordPiece tokenizers: transformers' ids on the same vocab.txt, added ids, errors, the bundled vocab."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest

from megatron.config.errors import ConfigError
from megatron.data.tokenizer import build_tokenizer
from tests.launch import BERT_VOCAB_FILE, REPO_ROOT

SAMPLES = [
    "In the beginning God created the heaven and the earth.",
    "Hello World, HELLO world!",
    "I'm sure they'll say it's what we've done. DON'T SHOUT",
    "Ünïcödé café naïve résumé — “quotes” ‘single’ …",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Numbers: 0 7 42 1234567 3.14159 -2.5e10 1,000,000 $19.99 50%",
    "Punctuation!!! ??? ... --- (brackets) [x] {y} <z> @#&*",
    "windows\r\nline\r\nends and\u00a0nbsp\u2003em space\u200bzero width",
    "control\x00chars\ufffd and\ttabs",
    "[MASK] literal [CLS]special[SEP] tokens [PAD] and [UNK]",
    "[BOS] <extra_id_0> are not special to BERT",
    "x" * 150,
    "",
]


@lru_cache(maxsize=4)
def ours(tokenizer_type: str, extra_ids: int = 0):
    return build_tokenizer(tokenizer_type, str(BERT_VOCAB_FILE), None, vocab_extra_ids=extra_ids)


def corpus_texts(count: int = 30) -> list[str]:
    with (REPO_ROOT / "data" / "corpus" / "kjv.jsonl").open() as handle:
        return [json.loads(next(handle))["text"] for _ in range(count)]


@pytest.mark.parametrize("tokenizer_type", ["BertWordPieceLowerCase", "BertWordPieceCase"])
def test_ids_match_transformers_bert_tokenizer(tokenizer_type):
    import transformers
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    lower = tokenizer_type == "BertWordPieceLowerCase"
    fast = transformers.BertTokenizer(vocab=str(BERT_VOCAB_FILE), do_lower_case=lower)
    legacy = BertTokenizerLegacy(str(BERT_VOCAB_FILE), do_lower_case=lower)  # BERT's original Python one
    tokenizer = ours(tokenizer_type)
    for text in SAMPLES + corpus_texts():
        ids = tokenizer.tokenize(text)
        assert ids == fast.encode(text, add_special_tokens=False), text
        assert ids == legacy.encode(text, add_special_tokens=False), text


def test_special_ids_and_added_tokens():
    base = ours("BertWordPieceLowerCase")
    vocab_lines = BERT_VOCAB_FILE.read_text(encoding="utf-8").splitlines()
    assert (base.pad, base.cls, base.sep, base.mask) == tuple(
        vocab_lines.index(token) for token in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
    )
    # [BOS] and [EOS] follow the vocabulary (Megatron adds them), then --vocab-extra-ids sentinels.
    assert (base.bos_token_id, base.eos_token_id) == (len(vocab_lines), len(vocab_lines) + 1)
    assert base.vocab_size == len(vocab_lines) + 2
    t5 = ours("BertWordPieceLowerCase", 100)
    assert t5.vocab_size == len(vocab_lines) + 102
    assert t5.additional_special_tokens_ids == list(range(len(vocab_lines) + 2, len(vocab_lines) + 102))
    assert t5.convert_ids_to_tokens(t5.additional_special_tokens_ids[:2]) == ["<extra_id_0>", "<extra_id_1>"]
    # A text spelling a sentinel is text, as in Megatron: the ids stay those of the vocabulary.
    assert t5.tokenize("<extra_id_0>") == base.tokenize("<extra_id_0>")
    assert max(t5.tokenize("<extra_id_0> [BOS]")) < len(vocab_lines)
    assert t5.detokenize(t5.tokenize("the heaven and the earth")) == "the heaven and the earth"


def test_bad_vocab_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="--vocab-file .* cannot be read"):
        build_tokenizer("BertWordPieceLowerCase", str(tmp_path / "missing.txt"), None)
    not_bert = tmp_path / "vocab.txt"
    not_bert.write_text("a\nb\n[CLS]\n")
    with pytest.raises(ConfigError, match=r"--vocab-file .* lacks \[PAD\], \[UNK\], \[SEP\], \[MASK\]"):
        build_tokenizer("BertWordPieceCase", str(not_bert), None)
    with pytest.raises(ConfigError, match="--vocab-file is required with --tokenizer-type BertWordPieceCase"):
        build_tokenizer("BertWordPieceCase", None, None)
    with pytest.raises(ConfigError, match="--vocab-extra-ids 3 with --tokenizer-type GPT2BPETokenizer"):
        build_tokenizer("GPT2BPETokenizer", "v", "m", vocab_extra_ids=3)


def test_bundled_vocabulary_rebuilds_identically(tmp_path):
    from tools.train_wordpiece import main as train_wordpiece

    path = train_wordpiece(
        ["--input", str(REPO_ROOT / "data" / "corpus" / "kjv.jsonl"), "--output-dir", str(tmp_path)]
    )
    assert open(path, encoding="utf-8").read() == BERT_VOCAB_FILE.read_text(encoding="utf-8")
    assert ours("BertWordPieceLowerCase").tokenize("the LORD") == ours("BertWordPieceCase").tokenize(
        "the lord"
    )
