"""Small task files in the exact published formats (GLUE MNLI and QQP ``.tsv``, RACE's folders of JSON
files), and a generated MNLI-format task that a small BERT can learn."""

from __future__ import annotations

import json
import random
from pathlib import Path

# Whole words of the bundled WordPiece vocabulary (data/tokenizer/bert-wordpiece/vocab.txt).
WORDS = (
    "lord god king people house land day son man children earth heaven water city hand name father word "
    "israel david sword bread wine fire gold silver mountain river tree field"
).split()
MNLI_TRAIN_HEADER = (
    "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse sentence1_parse "
    "sentence2_parse sentence1 sentence2 label1 gold_label"
).split()
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER[:10]
QQP_HEADER = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
QQP_TEST_HEADER = ["id", "question1", "question2"]
# The generated task's rule: sentence2's marker word gives the label (no marker: neutral).
MARKERS = {"entailment": "peace", "contradiction": "war"}


def parse(sentence: str) -> str:
    """The binary-parse column's form: the words in brackets."""
    return "( " + " ".join(sentence.split()) + " )"


def write_mnli(
    path: Path, rows: list[tuple[str, str, str | None]], header: list[str] = MNLI_TRAIN_HEADER
) -> Path:
    """``rows``: (sentence1, sentence2, gold label or None for a test file)."""
    lines = ["\t".join(header)]
    for index, (first, second, label) in enumerate(rows):
        fields = [str(index), str(1000 + index), f"{1000 + index}e", "fiction", parse(first), parse(second),
                  f"(ROOT {first})", f"(ROOT {second})", first, second]  # fmt: skip
        if "gold_label" in header:
            fields += [label] * (len(header) - len(fields))
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_qqp(path: Path, rows: list[tuple[str, str, int | None]], test: bool = False) -> Path:
    lines = ["\t".join(QQP_TEST_HEADER if test else QQP_HEADER)]
    for index, (first, second, label) in enumerate(rows):
        if test:
            lines.append("\t".join([str(index), first, second]))
        else:
            lines.append(
                "\t".join([str(index), str(2 * index), str(2 * index + 1), first, second, str(label)])
            )
    path.write_text("\n".join(lines) + "\n")
    return path


def write_race(folder: Path, records: list[dict]) -> Path:
    """One file per record, named as RACE names them (``1.txt``, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, record in enumerate(records, start=1):
        (folder / f"{number}.txt").write_text(json.dumps(record))
    return folder


def generated_mnli(count: int, seed: int) -> list[tuple[str, str, str]]:
    """Balanced pairs of random words whose label is set by sentence2's marker word (``peace``:
    entailment, ``war``: contradiction, none: neutral); the majority class is a third."""
    rng = random.Random(seed)
    labels = ["entailment", "contradiction", "neutral"]
    rows = []
    for index in range(count):
        label = labels[index % 3]
        first = " ".join(rng.choices(WORDS, k=rng.randint(3, 6)))
        second = rng.choices(WORDS, k=rng.randint(3, 6))
        if label in MARKERS:
            second.insert(rng.randrange(len(second) + 1), MARKERS[label])
        rows.append((first, " ".join(second), label))
    rng.shuffle(rows)
    return rows


def generated_race(count: int, seed: int) -> list[dict]:
    """RACE records whose right option is the one word of the options that the article holds."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        article_words = rng.sample(WORDS, 8)
        others = [word for word in WORDS if word not in article_words]
        answers, options, questions = [], [], []
        for question in range(2):
            right = rng.randrange(4)
            choices = rng.sample(others, 3)
            choices.insert(right, article_words[question])
            options.append(choices)
            answers.append("ABCD"[right])
            questions.append("which word is in the story ?" if question else "the story tells of _ .")
        records.append({"answers": answers, "options": options, "questions": questions,
                        "article": " ".join(article_words) + " .", "id": "generated.txt"})  # fmt: skip
    return records
