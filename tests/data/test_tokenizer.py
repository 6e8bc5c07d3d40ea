"""Tokenizers: GPT2BPETokenizer and HFTokenizer (GPT-2 and LLaMA style) give transformers' ids, HFTokenizer
finds its eod, NullTokenizer reads ids, bad flags are named."""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import regex
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from megatron.config.errors import ConfigError
from megatron.data.tokenizer import TOKENIZER_TYPES, build_tokenizer
from tests.data.corpora import MERGES, TOKENIZER_DIR, VOCAB

SAMPLES = [
    "In the beginning God created the heaven and the earth.",
    "Hello world",
    " Hello  world\n\n\tindented\n",
    "I'm sure they'll say it's what we've done, and he'd know you're right. DON'T SHOUT",
    "Ünïcödé café naïve résumé — “quotes” ‘single’ …",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 flag 🇫🇷",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Numbers: 0 7 42 1234567 3.14159 -2.5e10 1,000,000 $19.99 50%",
    "Punctuation!!! ??? ... --- (brackets) [x] {y} <z> @#&*",
    "   leading spaces and trailing spaces   ",
    "windows\r\nline\r\nends and\u00a0nbsp\u2003em space",
    "a<|endoftext|>b",
    "text <|endoftext|> more text<|endoftext|>",
    "<|endoftext|>",
    "<|endoftext",
    "",
    "x" * 300,
    "mixed\ttabs\t\tand    runs\n\n\n\nof newlines",
]


@lru_cache(maxsize=1)
def ours():
    return build_tokenizer("GPT2BPETokenizer", VOCAB, MERGES)


def test_bundled_tokenizer_shape() -> None:
    tok = ours()
    assert tok.vocab_size == 8192
    assert tok.eod == 8191
    assert tok.name == "GPT2BPETokenizer"
    assert tok.tokenize("<|endoftext|>") == [tok.eod]


def test_matches_transformers_gpt2_tokenizer() -> None:
    from transformers import GPT2Tokenizer

    reference = GPT2Tokenizer.from_pretrained(str(TOKENIZER_DIR))
    tok = ours()
    assert len(reference) == tok.vocab_size and reference.eos_token_id == tok.eod
    for text in SAMPLES:
        ids = tok.tokenize(text)
        assert ids == reference.encode(text, add_special_tokens=False), text
        assert ids == reference(text)["input_ids"], text
        assert tok.detokenize(ids) == reference.decode(ids), text


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, rebuilt from its definition."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def reference_bpe(text: str) -> list[int]:
    """GPT-2's algorithm written out: split by the regex, map bytes, merge the lowest-ranked pair."""
    vocab = json.loads(Path(VOCAB).read_text(encoding="utf-8"))
    lines = Path(MERGES).read_text(encoding="utf-8").split("\n")
    ranks = {tuple(line.split(" ")): i for i, line in enumerate(x for x in lines[1:] if x)}
    table = _bytes_to_unicode()
    ids: list[int] = []
    pieces = text.split("<|endoftext|>")
    for n, piece in enumerate(pieces):
        for word in GPT2_PATTERN.findall(piece):
            symbols = [table[b] for b in word.encode("utf-8")]
            while len(symbols) > 1:
                pairs = [(ranks.get(p, float("inf")), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
                rank, _ = min(pairs)
                if rank == float("inf"):
                    break
                first, second = next(p for p in zip(symbols, symbols[1:]) if ranks.get(p) == rank)
                merged, i = [], 0
                while i < len(symbols):
                    if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                        merged.append(first + second)
                        i += 2
                    else:
                        merged.append(symbols[i])
                        i += 1
                symbols = merged
            ids += [vocab[s] for s in symbols]
        if n < len(pieces) - 1:
            ids.append(vocab["<|endoftext|>"])
    return ids


def test_matches_an_independent_python_bpe() -> None:
    tok = ours()
    for text in SAMPLES:
        assert tok.tokenize(text) == reference_bpe(text), text


def test_round_trip() -> None:
    tok = ours()
    for text in SAMPLES:
        assert tok.detokenize(tok.tokenize(text)) == text


def _save_hf_tokenizer(path: Path, special: list[str]) -> None:
    """A tokenizer.json built from the bundled GPT-2 files, with the given special tokens."""
    vocab = json.loads(Path(VOCAB).read_text(encoding="utf-8"))
    vocab.pop("<|endoftext|>")
    merges = [tuple(line.split(" ")) for line in Path(MERGES).read_text().split("\n")[1:] if line]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def test_hf_tokenizer_from_file_and_folder(tmp_path: Path) -> None:
    _save_hf_tokenizer(tmp_path / "gpt" / "tokenizer.json", ["<pad>", "<|endoftext|>"])
    for where in (tmp_path / "gpt" / "tokenizer.json", tmp_path / "gpt"):
        tok = build_tokenizer("HFTokenizer", None, None, str(where))
        assert tok.name == "HFTokenizer"
        assert tok.vocab_size == 8193
        assert tok.eod == 8192
        text = "And God said, Let there be light."
        assert tok.tokenize(text) == ours().tokenize(text)
        assert tok.detokenize(tok.tokenize(text)) == text


def test_hf_tokenizer_eod_fallbacks(tmp_path: Path) -> None:
    _save_hf_tokenizer(tmp_path / "s" / "tokenizer.json", ["<s>", "</s>"])
    assert build_tokenizer("HFTokenizer", None, None, str(tmp_path / "s")).eod == 8192

    _save_hf_tokenizer(tmp_path / "cfg" / "tokenizer.json", ["<bos>", "<end>"])
    (tmp_path / "cfg" / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<end>"}}))
    assert build_tokenizer("HFTokenizer", None, None, str(tmp_path / "cfg")).eod == 8192

    _save_hf_tokenizer(tmp_path / "none" / "tokenizer.json", ["<pad>"])
    with pytest.raises(ConfigError, match=r"--tokenizer-model .*none.* has no end-of-document token"):
        build_tokenizer("HFTokenizer", None, None, str(tmp_path / "none"))


def test_unknown_tokenizer_type() -> None:
    with pytest.raises(
        ConfigError, match=r"--tokenizer-type 'SentencePiece' is not supported.*GPT2BPETokenizer"
    ):
        build_tokenizer("SentencePiece", VOCAB, MERGES)


def test_missing_gpt2_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--vocab-file is required"):
        build_tokenizer("GPT2BPETokenizer", None, MERGES)
    with pytest.raises(ConfigError, match=r"--merge-file is required"):
        build_tokenizer("GPT2BPETokenizer", VOCAB, None)
    missing = str(tmp_path / "vocab.json")
    with pytest.raises(ConfigError, match=rf"--vocab-file '{regex.escape(missing)}' cannot be read"):
        build_tokenizer("GPT2BPETokenizer", missing, MERGES)
    with pytest.raises(ConfigError, match=r"--merge-file .*merges\.txt' cannot be read"):
        build_tokenizer("GPT2BPETokenizer", VOCAB, str(tmp_path / "merges.txt"))


def test_malformed_gpt2_files(tmp_path: Path) -> None:
    bad_json = tmp_path / "vocab.json"
    bad_json.write_text("{not json")
    with pytest.raises(ConfigError, match=r"--vocab-file .*vocab\.json' is not valid JSON"):
        build_tokenizer("GPT2BPETokenizer", str(bad_json), MERGES)
    no_eod = tmp_path / "no_eod.json"
    no_eod.write_text(json.dumps({"a": 0, "b": 1}))
    with pytest.raises(ConfigError, match=r"--vocab-file .*no_eod\.json' has no '<\|endoftext\|>' entry"):
        build_tokenizer("GPT2BPETokenizer", str(no_eod), MERGES)
    bad_merges = tmp_path / "merges.txt"
    bad_merges.write_text("#version: 0.2\nt h\nthree parts here\n")
    with pytest.raises(ConfigError, match=r"--merge-file .*merges\.txt' line 3 is 'three parts here'"):
        build_tokenizer("GPT2BPETokenizer", VOCAB, str(bad_merges))
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("#version: 0.2\nzz qq\n")
    with pytest.raises(ConfigError, match=r"--vocab-file .* and --merge-file .* do not fit together"):
        build_tokenizer("GPT2BPETokenizer", VOCAB, str(unknown))


def test_missing_or_bad_hf_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--tokenizer-model is required with --tokenizer-type HFTokenizer"):
        build_tokenizer("HFTokenizer", None, None, None)
    with pytest.raises(ConfigError, match=r"--tokenizer-model .*absent.*: no tokenizer\.json found"):
        build_tokenizer("HFTokenizer", None, None, str(tmp_path / "absent"))
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"version": "1.0"}')
    with pytest.raises(ConfigError, match=r"--tokenizer-model .*tokenizer\.json' could not be read"):
        build_tokenizer("HFTokenizer", None, None, str(broken))


@pytest.fixture(scope="module")
def llama_tokenizer_json(sentencepiece_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LLaMA-style tokenizer.json, converted by transformers from the test's SentencePiece model as HF
    converts LLaMA's tokenizer.model (BPE with byte fallback, <s> added in front)."""
    from transformers import LlamaTokenizerFast

    source = tmp_path_factory.mktemp("llama_sentencepiece")
    shutil.copyfile(sentencepiece_model, source / "tokenizer.model")
    folder = tmp_path_factory.mktemp("llama_hf")
    converted = LlamaTokenizerFast.from_pretrained(str(source), add_bos_token=True, add_eos_token=False)
    converted.save_pretrained(str(folder))
    return folder


def test_hf_tokenizer_reads_a_llama_tokenizer_json(
    llama_tokenizer_json: Path, sentencepiece_model: str
) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(llama_tokenizer_json))
    raw = Tokenizer.from_file(str(llama_tokenizer_json / "tokenizer.json"))
    assert raw.model.byte_fallback
    for where in (llama_tokenizer_json, llama_tokenizer_json / "tokenizer.json"):
        tok = build_tokenizer("HFTokenizer", None, None, str(where))
        assert tok.vocab_size == len(reference) == 1000
        assert tok.eod == reference.eos_token_id == raw.token_to_id("</s>")
        for text in SAMPLES:
            ids = tok.tokenize(text)
            assert ids == reference(text)["input_ids"] == raw.encode(text).ids, text
            assert ids[0] == reference.bos_token_id == raw.token_to_id("<s>"), text
            assert tok.detokenize(ids) == reference.decode(ids), text
    assert any(token.startswith("<0x") for token in reference.convert_ids_to_tokens(tok.tokenize("😀")))
    # On prose the converted file and the SentencePiece model agree; this conversion differs from
    # SentencePiece on leading spaces (see the Hub layout below).
    llama2 = build_tokenizer("Llama2Tokenizer", None, None, sentencepiece_model)
    for text in SAMPLES[:2] + [SAMPLES[4], SAMPLES[7]]:
        assert tok.tokenize(text) == llama2.tokenize(text), text


def test_hf_tokenizer_on_the_llama2_hub_layout_gives_sentencepiece_ids(
    llama_tokenizer_json: Path, sentencepiece_model: str, tmp_path: Path
) -> None:
    """Llama 2's tokenizer.json on the Hub prepends and escapes the space in its normalizer, with no
    pre-tokenizer. Read as written (by ``tokenizers``, as HFTokenizer does), it gives SentencePiece's ids,
    hence Llama2Tokenizer's, leading spaces included. (transformers 5 rebuilds a LlamaTokenizer's pipeline
    and so differs from the file on leading spaces; that is why this compares with ``tokenizers``.)"""
    hub = Tokenizer.from_file(str(llama_tokenizer_json / "tokenizer.json"))
    hub.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    hub.pre_tokenizer = None
    hub.save(str(tmp_path / "tokenizer.json"))
    tok = build_tokenizer("HFTokenizer", None, None, str(tmp_path / "tokenizer.json"))
    llama2 = build_tokenizer("Llama2Tokenizer", None, None, sentencepiece_model)
    assert (tok.vocab_size, tok.eod) == (llama2.vocab_size, llama2.eod)
    for text in SAMPLES:
        ids = tok.tokenize(text)
        assert ids == hub.encode(text).ids == llama2.tokenize(text), text
        assert tok.detokenize(ids[1:]) == text, text


def test_null_tokenizer_reads_ids() -> None:
    """Megatron's NullTokenizer: --vocab-size N holds ids 0..N-1, eod is N, vocab_size N + 1."""
    tok = build_tokenizer("NullTokenizer", None, None, vocab_size=100)
    assert (tok.name, tok.vocab_size, tok.eod) == ("NullTokenizer", 101, 100)
    assert tok.tokenize("5 0 99  100\n7") == [5, 0, 99, 100, 7]
    assert tok.tokenize("") == []
    assert tok.detokenize(tok.tokenize("5 0 99 100 7")) == "5 0 99 100 7"


def test_null_tokenizer_errors() -> None:
    with pytest.raises(ConfigError, match=r"--vocab-size is required with --tokenizer-type NullTokenizer"):
        build_tokenizer("NullTokenizer", None, None)
    with pytest.raises(ConfigError, match=r"--vocab-size 0: NullTokenizer needs"):
        build_tokenizer("NullTokenizer", None, None, vocab_size=0)
    with pytest.raises(ConfigError, match=r"--vocab-extra-ids 2 with --tokenizer-type NullTokenizer"):
        build_tokenizer("NullTokenizer", None, None, vocab_extra_ids=2, vocab_size=10)
    tok = build_tokenizer("NullTokenizer", None, None, vocab_size=10)
    with pytest.raises(
        ConfigError, match=r"NullTokenizer reads each text as space-separated integer token ids; got '1 two'"
    ):
        tok.tokenize("1 two")
    for bad in ("11", "-1"):
        with pytest.raises(ConfigError, match=rf"token id {bad} is outside 0..10 \(--vocab-size 10 plus"):
            tok.tokenize(f"3 {bad}")
    with pytest.raises(
        ConfigError, match=r"--vocab-size 10 with --tokenizer-type GPT2BPETokenizer: only NullTok"
    ):
        build_tokenizer("GPT2BPETokenizer", VOCAB, MERGES, vocab_size=10)


def test_tokenizer_types_are_megatrons() -> None:
    assert set(TOKENIZER_TYPES) == {
        "GPT2BPETokenizer", "HFTokenizer", "BertWordPieceLowerCase", "BertWordPieceCase",
        "SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer", "NullTokenizer",
    }  # fmt: skip
