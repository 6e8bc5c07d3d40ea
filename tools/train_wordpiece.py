"""Train a BERT WordPiece vocabulary (``vocab.txt``) on a JSON-lines corpus.

The bundled vocabulary under ``data/tokenizer/bert-wordpiece`` was made with the defaults:

    python tools/train_wordpiece.py --input data/corpus/kjv.jsonl --output-dir data/tokenizer/bert-wordpiece

Training uses the same normalisation and pre-tokenisation as ``--tokenizer-type BertWordPieceLowerCase``
(``--cased`` for ``BertWordPieceCase``), so every word of the corpus is covered by the pieces. The file has
BERT's layout: ``[PAD] [UNK] [CLS] [SEP] [MASK]`` first, then the characters (word-initial and ``##``
continuations), then the merged pieces in the order they were learnt, one per line;
``transformers.BertTokenizer`` and Megatron read it unchanged.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import os
import sys
from collections import Counter, defaultdict

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tokenizers import normalizers, pre_tokenizers  # noqa: E402

from megatron.config.errors import ConfigError  # noqa: E402
from megatron.data.bert_tokenizer import BERT_SPECIAL_TOKENS  # noqa: E402
from tools.train_tokenizer import iter_texts  # noqa: E402

logger = logging.getLogger("tools.train_wordpiece")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, nargs="+", help="JSON-lines file(s), .jsonl or .jsonl.gz")
    parser.add_argument("--json-key", default="text", help="the key holding each document's text")
    parser.add_argument("--output-dir", required=True, help="where vocab.txt is written")
    parser.add_argument("--vocab-size", type=int, default=8000, help="entries including the special tokens")
    parser.add_argument("--min-frequency", type=int, default=2, help="a pair seen fewer times is not merged")
    parser.add_argument("--cased", action="store_true", help="keep case and accents (BertWordPieceCase)")
    args = parser.parse_args(argv)
    if args.vocab_size <= len(BERT_SPECIAL_TOKENS) + 26:
        raise ConfigError(
            f"--vocab-size {args.vocab_size} is too small for a WordPiece vocabulary; use 8000."
        )
    return args


def count_words(texts, lower_case: bool) -> Counter:
    """Words as ``--tokenizer-type BertWordPiece*`` sees them: BERT's normaliser, then its pre-tokeniser."""
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lower_case
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def train(word_counts: Counter, vocab_size: int, min_frequency: int) -> list[str]:
    """WordPiece pieces by byte-pair merging (as HF's WordPieceTrainer learns them), special tokens first.

    Written out rather than calling ``tokenizers.trainers.WordPieceTrainer`` because that trainer breaks ties
    between equally frequent pairs in hash order, which differs from run to run; here a tie goes to the
    alphabetically first pair, so the same corpus always gives the same file.
    """
    words = sorted(word_counts)
    pieces = [[word[0], *("##" + char for char in word[1:])] for word in words]
    alphabet = sorted({piece for split in pieces for piece in split})
    vocab = [*BERT_SPECIAL_TOKENS, *alphabet]
    pair_counts: Counter = Counter()
    pair_words: dict[tuple[str, str], set[int]] = defaultdict(set)
    for index, split in enumerate(pieces):
        for pair in zip(split, split[1:]):
            pair_counts[pair] += word_counts[words[index]]
            pair_words[pair].add(index)
    known = set(vocab)
    # A heap of (-count, pair); entries whose count has changed since they were pushed are skipped.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        negative, best = heapq.heappop(heap)
        if pair_counts.get(best) != -negative:
            continue
        if -negative < min_frequency:
            break
        merged = best[0] + best[1][2:]
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        changed = set()
        for index in sorted(pair_words.pop(best)):
            split, count = pieces[index], word_counts[words[index]]
            for pair in zip(split, split[1:]):
                pair_counts[pair] -= count
                changed.add(pair)
                if pair_counts[pair] <= 0:
                    del pair_counts[pair]
            joined, position = [], 0
            while position < len(split):
                if position + 1 < len(split) and (split[position], split[position + 1]) == best:
                    joined.append(merged)
                    position += 2
                else:
                    joined.append(split[position])
                    position += 1
            pieces[index] = joined
            for pair in zip(joined, joined[1:]):
                pair_counts[pair] += count
                pair_words[pair].add(index)
                changed.add(pair)
        for pair in changed:
            if pair in pair_counts:
                heapq.heappush(heap, (-pair_counts[pair], pair))
    return vocab


def main(argv: list[str] | None = None) -> str:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    counts = count_words(iter_texts(args.input, args.json_key), lower_case=not args.cased)
    pieces = train(counts, args.vocab_size, args.min_frequency)
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "vocab.txt")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(piece + "\n" for piece in pieces))
    logger.info("wrote %s: %d entries (%s first)", path, len(pieces), " ".join(BERT_SPECIAL_TOKENS))
    return path


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:  # the message says what to fix; a traceback would only bury it
        sys.exit(f"train_wordpiece.py: error: {exc}")
