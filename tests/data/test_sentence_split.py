"""The rule-based sentence splitter on text that trips naive splitters: abbreviations, quotes, numbers."""

from __future__ import annotations

import pytest

from megatron.data.sentence_split import split_sentences

CASES = [
    (
        "Mr. Smith went to Washington. He arrived at 5 p.m. The meeting began.",
        ["Mr. Smith went to Washington.", "He arrived at 5 p.m.", "The meeting began."],
    ),
    (
        "Dr. J. R. R. Tolkien wrote books. They sold well.",
        ["Dr. J. R. R. Tolkien wrote books.", "They sold well."],
    ),
    ('He said, "Stop." Then he left.', ['He said, "Stop."', "Then he left."]),
    ('"Why?" she asked. Nobody answered!', ['"Why?" she asked.', "Nobody answered!"]),
    ("He wrote “Hello.” She replied ‘Hi!’ Done.", ["He wrote “Hello.”", "She replied ‘Hi!’", "Done."]),
    ("(This is an aside.) Then more text.", ["(This is an aside.)", "Then more text."]),
    (
        "The value is 3.14 today. Prices rose 2.5% in 2020. In 2021 they fell.",
        ["The value is 3.14 today.", "Prices rose 2.5% in 2020.", "In 2021 they fell."],
    ),
    ("It cost $19.99. That was cheap.", ["It cost $19.99.", "That was cheap."]),
    (
        "See Fig. 3 for details. It shows e.g. the trend.",
        ["See Fig. 3 for details.", "It shows e.g. the trend."],
    ),
    ("Born on Jan. 5, 1990. He was young.", ["Born on Jan. 5, 1990.", "He was young."]),
    (
        "Visit example.com today. It is No. 1 in the list.",
        ["Visit example.com today.", "It is No. 1 in the list."],
    ),
    (
        "Apple Inc. announced results. Then Apple Inc. The company said more.",
        ["Apple Inc. announced results.", "Then Apple Inc.", "The company said more."],
    ),
    (
        "He lives in the U.S. He likes it. The U.S. Army is big.",
        ["He lives in the U.S.", "He likes it.", "The U.S. Army is big."],
    ),
    ("Items: apples, pears, etc. The list ends.", ["Items: apples, pears, etc.", "The list ends."]),
    ("Wait... what? Yes... It works.", ["Wait... what?", "Yes...", "It works."]),
    ("Question?! Answer.", ["Question?!", "Answer."]),
    ("no capital after. this stays one", ["no capital after. this stays one"]),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_tricky_english(text, expected):
    assert split_sentences(text) == expected


def test_paragraph_breaks_end_sentences_and_single_newlines_do_not():
    text = "Genesis 1\n\nIn the beginning God created\nthe heaven and the earth.\nAnd the earth was void."
    assert split_sentences(text) == [
        "Genesis 1",
        "In the beginning God created\nthe heaven and the earth.",
        "And the earth was void.",
    ]


def test_whitespace_only_and_empty_text_give_no_sentences():
    assert split_sentences("") == []
    assert split_sentences(" \n\n \t ") == []


def test_every_character_except_whitespace_is_kept():
    text = 'A. B? "C!" (D.) 3.5 e.g. f. G...\n\nH'
    assert "".join(split_sentences(text)).replace(" ", "") == "".join(text.split())
