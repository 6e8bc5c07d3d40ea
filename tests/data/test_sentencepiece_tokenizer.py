"""SentencePiece tokenizers: ids are the ``sentencepiece`` package's, with Megatron's BOS, EOD and special
tokens on top; bad models and flags are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from sentencepiece import SentencePieceProcessor, SentencePieceTrainer

from megatron.config.errors import ConfigError
from megatron.data.tokenizer import build_tokenizer

SAMPLES = [
    "In the beginning God created the heaven and the earth.",
    "Hello world",
    " Hello  world\n\n\tindented\n",
    "   leading spaces and trailing spaces   ",
    "Ünïcödé café naïve résumé — “quotes” ‘single’ …",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 flag 🇫🇷",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Numbers: 0 7 42 1234567 3.14159 -2.5e10 1,000,000 $19.99 50%",
    "windows\r\nline\r\nends and\u00a0nbsp\u2003em space",
    "a <s> b </s> c <unk> d",
    "",
    "x" * 300,
]
# Megatron's SentencePieceTokenizer special tokens, and text that spells them.
SPECIAL_SAMPLES = [
    "a <EOD> b",
    "<EOD>",
    "text<CLS>x <SEP><MASK>end",
    "  <EOD>  <EOD>",
    "<s>starts with bos</s>",
    "<extra_id_0> and <extra_id_2>",
    "<EOD <EO D> <eod>",
]


def test_gpt_sentencepiece_is_the_model_as_is(sentencepiece_model: str) -> None:
    sp = SentencePieceProcessor(model_file=sentencepiece_model)
    tok = build_tokenizer("GPTSentencePieceTokenizer", None, None, sentencepiece_model)
    assert tok.name == "GPTSentencePieceTokenizer"
    assert tok.vocab_size == sp.get_piece_size() == 1000
    assert tok.eod == tok.eos == sp.eos_id() == sp.piece_to_id("</s>")
    assert (tok.bos, tok.pad) == (sp.bos_id(), sp.pad_id()) == (sp.piece_to_id("<s>"), -1)
    for text in SAMPLES:
        ids = tok.tokenize(text)
        assert ids == sp.encode(text), text
        assert tok.detokenize(ids) == sp.decode(ids) == text, text
    # The model falls back to bytes for characters it never saw, as LLaMA's does.
    assert any(sp.is_byte(i) for i in tok.tokenize("emoji 😀"))


def test_llama2_tokenizer_starts_each_text_with_bos(sentencepiece_model: str) -> None:
    """Megatron-DeepSpeed's Llama2Tokenizer: ``tokenize(text, bos=True, eos=False)``; eod is eos."""
    sp = SentencePieceProcessor(model_file=sentencepiece_model)
    tok = build_tokenizer("Llama2Tokenizer", None, None, sentencepiece_model)
    assert tok.name == "Llama2Tokenizer"
    assert tok.vocab_size == sp.get_piece_size()
    assert tok.eod == tok.eos == sp.eos_id() and tok.bos == sp.bos_id()
    for text in SAMPLES:
        ids = tok.tokenize(text)
        assert ids == sp.encode(text, add_bos=True), text
        assert ids[0] == tok.bos
        assert tok.tokenize(text, bos=False) == sp.encode(text), text
        assert tok.tokenize(text, eos=True) == sp.encode(text, add_bos=True, add_eos=True), text
        assert tok.detokenize(ids) == text, text  # bos and eos decode to nothing


def megatron_special_split(text: str, special: dict[str, int], sp: SentencePieceProcessor) -> list[int]:
    """Megatron's rule written out: find the special token that occurs first, encode the text before it
    with the model, emit its id, carry on after it."""
    ids: list[int] = []
    while True:
        found = {token: text.find(token) for token in special if token in text}
        if not found:
            return ids + sp.encode(text)
        token = min(found, key=lambda t: (found[t], -len(t)))
        ids += sp.encode(text[: found[token]]) + [special[token]]
        text = text[found[token] + len(token) :]


def test_sentencepiece_tokenizer_adds_megatron_special_tokens(sentencepiece_model: str) -> None:
    sp = SentencePieceProcessor(model_file=sentencepiece_model)
    tok = build_tokenizer("SentencePieceTokenizer", None, None, sentencepiece_model, vocab_extra_ids=3)
    n = sp.get_piece_size()
    assert tok.name == "SentencePieceTokenizer"
    # New tokens take the next ids in Megatron's order; bos and eos are the model's own pieces, and the
    # model has no pad piece, so <PAD> is added.
    assert (tok.cls, tok.sep, tok.eod, tok.mask, tok.pad) == (n, n + 1, n + 2, n + 3, n + 4)
    assert (tok.bos, tok.eos) == (sp.bos_id(), sp.eos_id())
    assert tok.additional_special_tokens_ids == [n + 5, n + 6, n + 7]
    assert tok.vocab_size == n + 8
    special = {
        "<CLS>": tok.cls, "<SEP>": tok.sep, "<EOD>": tok.eod, "<MASK>": tok.mask, "<PAD>": tok.pad,
        "<s>": tok.bos, "</s>": tok.eos, "<extra_id_0>": n + 5, "<extra_id_1>": n + 6, "<extra_id_2>": n + 7,
    }  # fmt: skip
    assert {token: tok.vocab[token] for token in special} == special
    for text in SAMPLES + SPECIAL_SAMPLES:
        ids = tok.tokenize(text)
        assert ids == megatron_special_split(text, special, sp), text
        assert tok.detokenize(ids) == text, text
    assert tok.tokenize("Hello world") == sp.encode("Hello world")
    assert tok.tokenize("a <EOD> b") == sp.encode("a ") + [tok.eod] + sp.encode(" b")


def test_sentencepiece_tokenizer_names_missing_pieces(tmp_path: Path, sentencepiece_model: str) -> None:
    """A model with a pad piece but no bos or eos: SentencePieceTokenizer keeps its pad and adds <BOS> and
    <EOS>; the two tokenizers that use the model's own bos or eos refuse it instead of using id -1."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SAMPLES[:5] * 20), encoding="utf-8")
    prefix = tmp_path / "bare"
    SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=300, model_type="bpe", byte_fallback=True,
        unk_id=0, pad_id=1, bos_id=-1, eos_id=-1, num_threads=1, minloglevel=2,
    )  # fmt: skip
    model = f"{prefix}.model"
    tok = build_tokenizer("SentencePieceTokenizer", None, None, model)
    n = SentencePieceProcessor(model_file=model).get_piece_size()
    assert tok.pad == 1
    assert (tok.eod, tok.bos, tok.eos, tok.vocab_size) == (n + 2, n + 4, n + 5, n + 6)
    assert tok.tokenize("<BOS>x<EOS>")[0] == tok.bos
    for tokenizer_type in ("GPTSentencePieceTokenizer", "Llama2Tokenizer"):
        with pytest.raises(
            ConfigError, match=rf"--tokenizer-model .*bare\.model' has no eos .*{tokenizer_type}"
        ):
            build_tokenizer(tokenizer_type, None, None, model)

    no_bos = tmp_path / "no_bos"
    SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(no_bos), vocab_size=300, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=-1, eos_id=1, num_threads=1, minloglevel=2,
    )  # fmt: skip
    assert build_tokenizer("GPTSentencePieceTokenizer", None, None, f"{no_bos}.model").eod == 1
    with pytest.raises(ConfigError, match=r"has no bos piece, which --tokenizer-type Llama2Tokenizer needs"):
        build_tokenizer("Llama2Tokenizer", None, None, f"{no_bos}.model")


def test_bad_tokenizer_model(tmp_path: Path, sentencepiece_model: str) -> None:
    for tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer"):
        with pytest.raises(
            ConfigError, match=rf"--tokenizer-model is required with --tokenizer-type {tokenizer_type}"
        ):
            build_tokenizer(tokenizer_type, None, None, None)
    with pytest.raises(ConfigError, match=r"--tokenizer-model .*absent\.model' does not exist"):
        build_tokenizer("Llama2Tokenizer", None, None, str(tmp_path / "absent.model"))
    folder = Path(sentencepiece_model).parent
    with pytest.raises(ConfigError, match=r"is a folder; pass '.*tokenizer\.model'"):
        build_tokenizer("Llama2Tokenizer", None, None, str(folder))
    json_file = tmp_path / "tokenizer.json"
    json_file.write_text('{"version": "1.0"}')
    with pytest.raises(ConfigError, match=r"tokenizer\.json' is not a SentencePiece model .*HFTokenizer"):
        build_tokenizer("GPTSentencePieceTokenizer", None, None, str(json_file))


def test_flags_that_do_not_apply(sentencepiece_model: str) -> None:
    with pytest.raises(ConfigError, match=r"--vocab-extra-ids 3 with --tokenizer-type Llama2Tokenizer"):
        build_tokenizer("Llama2Tokenizer", None, None, sentencepiece_model, vocab_extra_ids=3)
    with pytest.raises(ConfigError, match=r"--vocab-extra-ids -1: must be >= 0"):
        build_tokenizer("SentencePieceTokenizer", None, None, sentencepiece_model, vocab_extra_ids=-1)
    with pytest.raises(
        ConfigError, match=r"--vocab-size 1000 with --tokenizer-type GPTSentencePieceTokenizer"
    ):
        build_tokenizer("GPTSentencePieceTokenizer", None, None, sentencepiece_model, vocab_size=1000)
