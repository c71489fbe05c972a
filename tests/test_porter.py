"""Porter stemmer (``mechbench.core.porter``) against NLTK's ``PorterStemmer()`` in ``NLTK_EXTENSIONS`` mode.

NLTK's stems come from ``tests/data/porter_nltk.tsv``, written by ``benchmarks/make_porter_fixture.py``
(which compared every word it knows, not only the rows it keeps); NLTK itself is not imported here.
The hand-written cases are examples of Porter (1980) and of NLTK's departures from it, each as NLTK
stems it (a whole stem, not the paper's single-step result: agreed -> agre, not agree).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mechbench.core.porter import measure, porter_stem

FIXTURE = Path(__file__).parent / "data" / "porter_nltk.tsv"


def nltk_stems() -> list[tuple[str, str]]:
    """``(word, NLTK stem)`` rows of the fixture, ``#`` comment lines skipped."""
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    return [(word, stem) for word, stem in (line.split("\t") for line in lines if not line.startswith("#"))]


def test_every_fixture_row_matches_nltk():
    rows = nltk_stems()
    assert len(rows) >= 2500
    assert len({word for word, _ in rows}) == len(rows)
    mismatches = [(word, stem, porter_stem(word)) for word, stem in rows if porter_stem(word) != stem]
    assert mismatches == []


@pytest.mark.parametrize(("word", "stem"), [
    # step 1a
    ("caresses", "caress"), ("ponies", "poni"), ("caress", "caress"), ("cats", "cat"),
    # step 1b
    ("feed", "feed"), ("agreed", "agre"), ("plastered", "plaster"), ("bled", "bled"), ("motoring", "motor"),
    ("sing", "sing"), ("conflated", "conflat"), ("troubled", "troubl"), ("sized", "size"), ("hopping", "hop"),
    ("tanned", "tan"), ("falling", "fall"), ("hissing", "hiss"), ("fizzed", "fizz"), ("failing", "fail"),
    ("filing", "file"),
    # step 1c
    ("happy", "happi"), ("sky", "sky"),
    # steps 2-4 (whole stems)
    ("relational", "relat"), ("conditional", "condit"), ("rational", "ration"), ("hopefulness", "hope"),
    ("generalization", "gener"), ("triplicate", "triplic"), ("formative", "form"), ("electrical", "electr"),
    ("goodness", "good"), ("allowance", "allow"), ("adjustment", "adjust"), ("adoption", "adopt"),
    ("effective", "effect"),
    # step 5
    ("probate", "probat"), ("rate", "rate"), ("cease", "ceas"), ("controll", "control"), ("roll", "roll"),
])
def test_porter_1980_examples(word: str, stem: str):
    assert porter_stem(word) == stem


@pytest.mark.parametrize(("word", "stem"), [
    ("dying", "die"), ("lying", "lie"), ("tying", "tie"), ("skies", "sky"), ("news", "news"),
    ("innings", "inning"), ("proceed", "proceed"), ("exceed", "exceed"),  # irregular forms
    ("dies", "die"), ("died", "die"), ("spied", "spi"),  # four-letter -ies/-ied keep -ie
    ("spy", "spi"), ("enjoy", "enjoy"), ("by", "by"),  # y -> i only after a consonant, not the first letter
    ("generously", "gener"), ("geologi", "geolog"),  # -alli -> -al then step 2 again; -logi -> -log
    ("owing", "owe"), ("ace", "ace"),  # *o holds for a two-letter vowel-consonant stem
    ("is", "is"), ("ss", "ss"), ("s", "s"), ("a", "a"),  # one or two letters: unchanged
    ("123abc", "123abc"), ("1990s", "1990"),
])
def test_nltk_extensions(word: str, stem: str):
    assert porter_stem(word) == stem


def test_lower_cases_like_nltk():
    assert porter_stem("Caresses") == "caress"
    assert porter_stem("IS") == "is"


@pytest.mark.parametrize(("stem", "m"), [
    ("tr", 0), ("ee", 0), ("tree", 0), ("y", 0), ("by", 0),
    ("trouble", 1), ("oats", 1), ("trees", 1), ("ivy", 1),
    ("troubles", 2), ("private", 2), ("oaten", 2), ("orrery", 2),
])
def test_measure_examples_of_the_paper(stem: str, m: int):
    assert measure(stem) == m
