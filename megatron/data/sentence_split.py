"""A rule-based English sentence splitter, for ``tools/preprocess_data.py --split-sentences``.

Megatron splits with NLTK's punkt, whose model must be downloaded; this splitter needs nothing at run time and
gives the same kind of result on ordinary English prose. A sentence ends at ``.``, ``!``, ``?`` or an
ellipsis, together with any closing quotes or brackets right after it, when whitespace and then the start of a
new sentence follow. What is *not* an end:

* a full stop after a title or other abbreviation that is always followed by more of the sentence
  (``Mr. Smith``, ``Dr.``, ``e.g.``, ``Fig. 3``, ``Jan. 5``), or after a single capital letter (the initials
  of ``J. R. R. Tolkien``);
* a full stop after an abbreviation that may end a sentence (``etc.``, ``Inc.``, ``U.S.``, ``a.m.``) unless a
  word that typically starts a sentence follows (``The``, ``He``, ``In`` ...);
* any mark followed by a lower-case word (``"Why?" he asked``; ``the end... or not``);
* a full stop inside a number or a name (``3.14``, ``example.com``): no whitespace follows it.

A blank line (a paragraph break) always ends a sentence, so headings without a full stop stay on their own;
a single line break is whitespace like any other, as in punkt. Sentences are returned stripped, their inner
text unchanged.
"""

from __future__ import annotations

import re

# Always followed by more of the same sentence (titles, and abbreviations that introduce what follows).
_NEVER_FINAL = frozenset(
    """
    mr mrs ms mssrs messrs dr prof rev fr hon gov sen rep pres gen col capt cmdr lt sgt maj adm st mt ft
    no nos vol vols fig figs eq eqs ch chap sec pp pg art para vs cf ca approx dept est al e.g i.e viz
    jan feb mar apr jun jul aug sep sept oct nov dec
    """.split()
)
# May end a sentence; taken as the end only when a typical sentence opener follows.
_MAYBE_FINAL = frozenset("etc inc ltd co corp bros jr sr esq a.m p.m u.s u.k u.n b.c a.d ph.d".split())
_SENTENCE_OPENERS = frozenset(
    """
    the a an this that these those it its he she they we i you his her their our my there here then
    but and so yet or nor if when while after before although though because since as in on at for
    from with by to of what why how who where which however meanwhile moreover also still now thus
    """.split()
)
_CLOSING = "\"'”’)]}»"
_OPENING = "\"'“‘([{«"
# The end mark(s), closing quotes/brackets, then whitespace; the next sentence starts after the whitespace.
_CANDIDATE = re.compile(r"(?:[.!?]+|…)[" + re.escape(_CLOSING) + r"]*(\s+)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` in order; empty and whitespace-only pieces are dropped."""
    sentences = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        start = 0
        for match in _CANDIDATE.finditer(paragraph):
            end = match.start(1)
            if _is_boundary(paragraph, match.start(), end, match.end()):
                sentences.append(paragraph[start:end].strip())
                start = match.end()
        sentences.append(paragraph[start:].strip())
    return [sentence for sentence in sentences if sentence]


def _is_boundary(text: str, mark: int, mark_end: int, next_start: int) -> bool:
    """Whether the end mark at ``text[mark:mark_end]`` (with its closing quotes) ends a sentence, the next
    one starting at ``next_start``."""
    if next_start >= len(text):
        return True
    marks = text[mark:mark_end].rstrip(_CLOSING)
    following = _next_word(text, next_start)
    if not following:
        return False
    first = following[0]
    if first.islower():
        return False
    if marks != ".":  # ! ? ... and combinations: the mark is unambiguous, the capital decides
        return first.isupper() or first.isdigit()
    word = _previous_word(text, mark)
    lowered = word.lower()
    if lowered in _NEVER_FINAL:
        return False
    if len(word) == 1 and word.isupper():  # an initial
        return False
    if lowered in _MAYBE_FINAL or _is_dotted_acronym(word):
        return re.match(r"[A-Za-z]*", following).group().lower() in _SENTENCE_OPENERS
    return first.isupper() or first.isdigit()


def _previous_word(text: str, mark: int) -> str:
    """The word right before the full stop, without opening quotes or brackets (``(Dr`` -> ``Dr``)."""
    start = mark
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:mark].lstrip(_OPENING + _CLOSING)


def _next_word(text: str, start: int) -> str:
    """The next word, opening quotes and brackets skipped (``"Why`` -> ``Why``)."""
    end = start
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end].lstrip(_OPENING)


def _is_dotted_acronym(word: str) -> bool:
    """``U.S``, ``e.g``, ``N.A.S.A``: letters joined by full stops (the last one is the mark itself)."""
    parts = word.split(".")
    return len(parts) > 1 and all(len(part) == 1 and part.isalpha() for part in parts)
