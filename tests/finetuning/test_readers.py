"""The task readers on files in the published formats, the samples they become (against transformers'
BertTokenizer on the same vocabulary) and the epochs' sample order."""

from __future__ import annotations

import numpy as np
import pytest

from megatron.data.tokenizer import build_tokenizer
from megatron.finetuning.readers import read_mnli, read_qqp, read_race
from megatron.finetuning.samples import EpochOrder, MultipleChoiceDataset, PairDataset
from tests.finetuning.task_files import (
    MNLI_DEV_HEADER,
    MNLI_TEST_HEADER,
    generated_race,
    write_mnli,
    write_qqp,
    write_race,
)
from tests.launch import BERT_VOCAB_FILE

transformers = pytest.importorskip("transformers")

PAIRS = [
    ("The king went up to the house.", "A man  went   up.", "entailment"),
    ('He said "yea".', "Nobody spoke at all on that day in the land of Israel and Judah.", "contradiction"),
    ("And God saw the light, that it was good.", "It was night.", "neutral"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("BertWordPieceLowerCase", str(BERT_VOCAB_FILE), None, None)


def test_mnli_train_dev_and_test_files(tmp_path):
    train = read_mnli(str(write_mnli(tmp_path / "train.tsv", PAIRS)))
    dev = read_mnli(str(write_mnli(tmp_path / "dev_matched.tsv", PAIRS, MNLI_DEV_HEADER)))
    test = read_mnli(str(write_mnli(tmp_path / "test_matched.tsv", PAIRS, MNLI_TEST_HEADER)))
    assert [example.label for example in train] == [1, 0, 2] == [example.label for example in dev]
    assert [example.label for example in test] == [None] * 3
    # Quotes are text (GLUE's files are not CSV-quoted); whitespace runs become one space.
    assert train[1].texts[0] == 'He said "yea".' and train[0].texts[1] == "A man went up."
    assert [example.uid for example in train] == ["0", "1", "2"]


def test_qqp_skips_rows_with_missing_fields(tmp_path):
    path = write_qqp(tmp_path / "train.tsv", [("How old is he?", "What is his age?", 1), ("Why?", "How?", 0)])
    with path.open("a") as file:
        file.write("7\t14\t15\tA question without its pair\n")
    examples = read_qqp(str(path))
    assert [(example.texts, example.label) for example in examples] == [
        (("How old is he?", "What is his age?"), 1),
        (("Why?", "How?"), 0),
    ]
    test = read_qqp(str(write_qqp(tmp_path / "test.tsv", [("a", "b", None)], test=True)))
    assert test[0].label is None and test[0].texts == ("a", "b")


def test_race_questions_fill_blanks_or_follow(tmp_path):
    record = {
        "article": "The lord is my shepherd.\nI shall not want.",
        "questions": ["The lord is my _ .", "Who is the shepherd?"],
        "options": [["king", "shepherd", "son", "father"], ["the king", "David", "the lord", "a man"]],
        "answers": ["B", "C"],
        "id": "middle1.txt",
    }
    examples = read_race(str(write_race(tmp_path / "RACE" / "dev" / "middle", [record])))
    assert [example.label for example in examples] == [1, 2]
    article, *choices = examples[0].texts
    assert article == "The lord is my shepherd. I shall not want."
    assert choices == [f"The lord is my {word} ." for word in ("king", "shepherd", "son", "father")]
    assert examples[1].texts[3] == "Who is the shepherd? the lord"


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda path: path.write_text("index\tsentence1\n0\ta\n"), "no column sentence2"),
        (lambda path: write_mnli(path, [("a", "b", "maybe")]), "label 'maybe' is not one of"),
        (lambda path: path.write_text(""), "is empty"),
    ],
)
def test_malformed_mnli_is_refused_with_the_line(tmp_path, write, message):
    path = tmp_path / "train.tsv"
    write(path)
    with pytest.raises(ValueError, match=message):
        read_mnli(str(path))


def test_race_needs_a_folder_of_records(tmp_path):
    with pytest.raises(ValueError, match="holds no .txt file"):
        read_race(str(tmp_path))
    (tmp_path / "1.txt").write_text('{"article": "a"}')
    with pytest.raises(ValueError, match="not a RACE record"):
        read_race(str(tmp_path))


def test_pair_samples_are_berts_tokenizer_encoding(tokenizer, tmp_path):
    """[CLS] A [SEP] B [SEP], token types, padding and longest-first truncation as transformers does."""
    reference = transformers.BertTokenizer(str(BERT_VOCAB_FILE), do_lower_case=True)
    examples = read_mnli(str(write_mnli(tmp_path / "train.tsv", PAIRS)))
    for seq_length in (16, 64):
        dataset = PairDataset("train.tsv", examples, tokenizer, seq_length)
        for index, example in enumerate(examples):
            expected = reference(
                *example.texts, max_length=seq_length, truncation="longest_first", padding="max_length"
            )
            sample = dataset[index]
            assert sample["text"].tolist() == expected["input_ids"]
            assert sample["types"].tolist() == expected["token_type_ids"]
            assert sample["padding_mask"].tolist() == expected["attention_mask"]
            assert int(sample["label"]) == example.label


def test_race_samples_keep_the_question_and_cut_the_article(tokenizer, tmp_path):
    examples = read_race(str(write_race(tmp_path / "race", generated_race(2, seed=0))))
    dataset = MultipleChoiceDataset("race", examples, tokenizer, 16)
    sample = dataset[0]
    assert sample["text"].shape == (4, 16) and sample["label"].shape == ()
    for choice, qa in zip(sample["text"], examples[0].texts[1:]):
        qa_ids = tokenizer.tokenize(qa)
        assert choice[: len(qa_ids) + 2].tolist() == [tokenizer.cls, *qa_ids, tokenizer.sep]
        assert choice[-1] == tokenizer.sep  # the article is cut to fit, the closing [SEP] kept


class Numbers:
    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


def test_epoch_order_reshuffles_each_epoch_and_drops_or_keeps_the_last_batch():
    order = EpochOrder(Numbers(10), epochs=3, global_batch_size=4, seed=5, keep_last=False)
    assert order.per_epoch == 8 and order.iterations == 6 and len(order) == 24
    epochs = [[order[i] for i in range(start, start + 8)] for start in (0, 8, 16)]
    assert all(len(set(epoch)) == 8 for epoch in epochs) and epochs[0] != epochs[1]
    kept = EpochOrder(Numbers(10), epochs=3, global_batch_size=4, seed=5, keep_last=True)
    assert kept.iterations == 8 and len(kept) == 32  # 30 samples, the last batch completed from epoch 4
    assert sorted(kept[i] for i in range(10, 20)) == list(range(10))
    # The same position gives the same sample whenever it is asked for (what resuming relies on).
    again = EpochOrder(Numbers(10), epochs=3, global_batch_size=4, seed=5, keep_last=False)
    assert [again[i] for i in reversed(range(24))] == [order[i] for i in reversed(range(24))]
    assert order.epoch_ends(4, 8) and not order.epoch_ends(8, 12)
    assert not np.array_equal(order.permutation(0), EpochOrder(Numbers(10), 3, 4, 6, False).permutation(0))
