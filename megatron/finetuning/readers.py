"""Readers for the published task files: GLUE's MNLI and QQP ``.tsv`` files and RACE's folders of JSON files.

Each reader returns :class:`Example` objects: one or two texts (or, for RACE, one text per answer choice)
and the label's index; ``label`` is None for a GLUE test file, which has no label column. Texts are
cleaned as Megatron-LM cleans them (line breaks and runs of whitespace become one space). A malformed
file raises ``ValueError`` naming the file, the line and what was expected.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("megatron")

# Megatron-LM's label order (tasks/glue/mnli.py, qqp.py): the classifier's output index of each label.
MNLI_LABELS = {"contradiction": 0, "entailment": 1, "neutral": 2}
QQP_LABELS = {"0": 0, "1": 1}
RACE_CHOICES = 4
# Megatron-LM's RACE caps the question with its answer at this many tokens (tasks/race/data.py).
RACE_MAX_QA_TOKENS = 128


@dataclass(frozen=True)
class Example:
    """``texts``: (sentence1, sentence2) for GLUE; for RACE the article and one question+answer text per
    choice. ``label``: the class (or choice) index; None where the file has no labels."""

    uid: str
    texts: tuple[str, ...]
    label: int | None


def clean_text(text: str) -> str:
    return " ".join(text.split())


def _tsv_rows(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, fields) of each data line. GLUE's files are tab-separated without
    quoting (quotes are text), so lines are split on tabs rather than read by ``csv``."""
    with open(path, encoding="utf-8") as file:
        lines = file.read().split("\n")
    if not lines or not lines[0].strip():
        raise ValueError(f"{path} is empty: expected a header line and tab-separated rows")
    header = lines[0].rstrip("\r").split("\t")
    rows = [(number, line.rstrip("\r").split("\t")) for number, line in enumerate(lines[1:], start=2)]
    return header, [(number, fields) for number, fields in rows if any(field.strip() for field in fields)]


def _columns(path: str, header: list[str], names: tuple[str, ...]) -> list[int]:
    missing = [name for name in names if name not in header]
    if missing:
        raise ValueError(
            f"{path}: the header has no column {', '.join(missing)} (it has {', '.join(header)}); give the "
            "task's file as published"
        )
    return [header.index(name) for name in names]


def _label(path: str, number: int, raw: str, labels: dict[str, int]) -> int:
    if raw not in labels:
        raise ValueError(f"{path} line {number}: label {raw!r} is not one of {', '.join(labels)}")
    return labels[raw]


def read_mnli(path: str) -> list[Example]:
    """GLUE MNLI (``train.tsv``, ``dev_matched.tsv``, ``dev_mismatched.tsv``; the ``test_*.tsv`` files have
    no ``gold_label``): columns index, ..., sentence1, sentence2, ..., gold_label."""
    header, rows = _tsv_rows(path)
    index, first, second = _columns(path, header, ("index", "sentence1", "sentence2"))
    gold = header.index("gold_label") if "gold_label" in header else None
    examples = []
    for number, fields in rows:
        if len(fields) != len(header):
            raise ValueError(
                f"{path} line {number}: {len(fields)} tab-separated fields, the header has {len(header)}"
            )
        label = None if gold is None else _label(path, number, fields[gold], MNLI_LABELS)
        examples.append(
            Example(fields[index], (clean_text(fields[first]), clean_text(fields[second])), label)
        )
    return examples


def read_qqp(path: str) -> list[Example]:
    """GLUE QQP (``train.tsv``, ``dev.tsv``: id, qid1, qid2, question1, question2, is_duplicate; ``test.tsv``:
    id, question1, question2). The published training file has a few rows with missing fields; like
    Megatron-LM, they are skipped, and their number logged."""
    header, rows = _tsv_rows(path)
    uid, first, second = _columns(path, header, ("id", "question1", "question2"))
    duplicate = header.index("is_duplicate") if "is_duplicate" in header else None
    examples, skipped = [], 0
    for number, fields in rows:
        if len(fields) != len(header):
            skipped += 1
            continue
        label = None if duplicate is None else _label(path, number, fields[duplicate], QQP_LABELS)
        examples.append(Example(fields[uid], (clean_text(fields[first]), clean_text(fields[second])), label))
    if skipped:
        logger.warning("%s: skipped %d row(s) without %d fields", path, skipped, len(header))
    return examples


def race_question_answer(question: str, option: str) -> str:
    """RACE's cloze questions hold a blank (``_``) that the option fills; the others are followed by it."""
    return question.replace("_", option) if "_" in question else f"{question} {option}"


def read_race(path: str) -> list[Example]:
    """A RACE folder (``RACE/train/middle``, ``RACE/dev/high``, ...) of ``*.txt`` files, each one JSON object
    with ``article``, ``questions``, ``options`` (4 per question) and ``answers`` (``A``-``D``): one example
    per question."""
    if not os.path.isdir(path):
        raise ValueError(
            f"{path} is not a folder: RACE data is a folder of .txt files, e.g. RACE/train/middle"
        )
    files = sorted(glob.glob(os.path.join(path, "*.txt")))
    if not files:
        raise ValueError(f"{path} holds no .txt file: give a RACE folder such as RACE/train/middle")
    examples = []
    for name in files:
        with open(name, encoding="utf-8") as file:
            try:
                record = json.load(file)
                article = clean_text(record["article"])
                questions, options, answers = record["questions"], record["options"], record["answers"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{name}: not a RACE record ({type(error).__name__}: {error}); expected one JSON object "
                    "with article, questions, options and answers"
                ) from None
        if not len(questions) == len(options) == len(answers):
            raise ValueError(
                f"{name}: {len(questions)} questions, {len(options)} option lists and {len(answers)} answers"
            )
        stem = os.path.splitext(os.path.basename(name))[0]
        for number, (question, choices, answer) in enumerate(zip(questions, options, answers)):
            if len(choices) != RACE_CHOICES or answer not in "ABCD" or len(answer) != 1:
                raise ValueError(
                    f"{name} question {number}: expected {RACE_CHOICES} options and an answer A-D, got "
                    f"{len(choices)} options and answer {answer!r}"
                )
            qa = tuple(clean_text(race_question_answer(question, choice)) for choice in choices)
            examples.append(Example(f"{stem}-{number}", (article, *qa), ord(answer) - ord("A")))
    return examples
