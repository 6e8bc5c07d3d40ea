"""WikiText's tokenized spelling back to ordinary text, as Megatron-LM's ``wikitext_detokenizer`` does it
before tokenizing: GPT tokenizers were trained on ordinary text, so perplexities are only comparable with
Megatron's (and GPT-2's published ones) when the text is restored the same way.

The rules run in Megatron's order; a later rule sees the earlier ones' output (the line rules, for example,
remove the spaces the punctuation rules leave before a newline). Megatron's one further rule, a regular
expression with literal slashes (``/' [0-9]/``), only matches the text ``/' 5/`` and so is left out.
"""

from __future__ import annotations

import re

# Plain substitutions before the bracket rules: the possessive after a plural, WikiText's escaped number
# separators (" @-@ " in "1 @,@ 000 @-@ year"), and the space WikiText puts before punctuation.
_BEFORE_BRACKETS = (
    ("s '", "s'"),
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
)

# The spaces just inside brackets and quotes: "( 1995 )" -> "(1995)", '" Song "' -> '"Song"'.
_BRACKETS = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
        (r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
        (r"{\s*([^}]*?)\s*}", r"{\1}"),
        (r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
        (r"'\s*([^']*?)\s*'", r"'\1'"),
    )
)

# Section headings ("= = Reception = =" -> "== Reception =="), the degree sign, spaces at line ends and
# starts, WikiText's "N" for a number, and the clitic "'s".
_AFTER_BRACKETS = (
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
)


def wikitext_detokenizer(text: str) -> str:
    """``text`` (a WikiText file's raw contents) as Megatron-LM restores it before tokenizing."""
    for old, new in _BEFORE_BRACKETS:
        text = text.replace(old, new)
    for pattern, replacement in _BRACKETS:
        text = pattern.sub(replacement, text)
    for old, new in _AFTER_BRACKETS:
        text = text.replace(old, new)
    return text
