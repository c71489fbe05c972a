"""The Porter stemmer, as NLTK's ``PorterStemmer()`` runs it (mode ``NLTK_EXTENSIONS``), in plain Python.

Algorithm: M. F. Porter (1980), "An algorithm for suffix stripping", *Program* 14(3): 130-137. This
module reproduces NLTK's default ``NLTK_EXTENSIONS`` mode, because that is the stemmer
``rouge_score`` uses with ``use_stemmer=True`` and ROUGE-1 recall in
:mod:`mechbench.analyses.retrieval` must match it; importing NLTK itself costs minutes on a slow
machine. ``tests/data/porter_nltk.tsv`` (made by ``benchmarks/make_porter_fixture.py``) holds
NLTK's stems of a word sample that ``tests/test_porter.py`` checks.

Terms of the paper: a *consonant* is a letter other than a, e, i, o, u, and other than a y that
follows a consonant (so a y that starts the word or follows a vowel is a consonant; digits are
consonants). Writing a word as ``[C](VC){m}[V]`` over runs of consonants ``C`` and vowels ``V``
gives its *measure* ``m``. ``*v*``: the stem contains a vowel; ``*d``: it ends with a double
consonant; ``*o``: it ends consonant-vowel-consonant with the last consonant not w, x or y.

Where NLTK's mode departs from the 1980 paper (all reproduced here):

* a pool of irregular forms is answered directly (``dying -> die``, ``skies -> sky``, ``news``, ...);
* words of one or two characters are returned unchanged;
* step 1a: a four-letter word in -ies keeps -ie (``dies -> die``, but ``ponies -> poni``);
* step 1b: -ied becomes -ie in a four-letter word and -i otherwise, before any other rule;
* step 1c: y -> i only after a consonant that is not the first letter (``happy -> happi``,
  ``enjoy``, ``by`` unchanged), with no ``*v*`` condition (``spy -> spi``);
* step 2: -alli -> -al is tried first and step 2 then runs again on the result; -bli -> -ble
  replaces the paper's -abli -> -able (Porter's own later version); -fulli -> -ful and
  -logi -> -log are added, the latter counting the l in the stem's measure (``geologi -> geolog``);
* ``*o`` also holds for a two-letter stem vowel-consonant, whatever the consonant
  (``ow(ing) -> owe``, ``ace`` keeps its e in step 5a).

Inputs are lower-cased first, as NLTK does by default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

#: NLTK's irregular forms: word -> stem, answered before any rule.
IRREGULAR_FORMS: dict[str, str] = {
    "sky": "sky", "skies": "sky",
    "dying": "die", "lying": "lie", "tying": "tie",
    "news": "news",
    "innings": "inning", "inning": "inning",
    "outings": "outing", "outing": "outing",
    "cannings": "canning", "canning": "canning",
    "howe": "howe",
    "proceed": "proceed", "exceed": "exceed", "succeed": "succeed",
}

_VOWELS = frozenset("aeiou")

#: A condition on the stem left once a rule's suffix is removed.
Condition = Callable[[str], bool]


def _letter_classes(word: str) -> str:
    """``word`` as a string of ``c`` (consonant) and ``v`` (vowel), one letter each (``toy -> cvc``)."""
    classes: list[str] = []
    for i, letter in enumerate(word):
        is_vowel = letter in _VOWELS or (letter == "y" and i > 0 and classes[i - 1] == "c")
        classes.append("v" if is_vowel else "c")
    return "".join(classes)


def measure(stem: str) -> int:
    """Porter's ``m``: the number of vowel-run/consonant-run pairs in ``[C](VC){m}[V]``.

    ``tree -> 0``, ``trouble -> 1``, ``troubles -> 2``.
    """
    return _letter_classes(stem).count("vc")


def _has_vowel(stem: str) -> bool:
    """Condition ``*v*``."""
    return "v" in _letter_classes(stem)


def _ends_double_consonant(stem: str) -> bool:
    """Condition ``*d``: the last two letters are the same consonant."""
    return len(stem) >= 2 and stem[-1] == stem[-2] and _letter_classes(stem)[-1] == "c"


def _ends_cvc(stem: str) -> bool:
    """Condition ``*o`` (consonant-vowel-consonant, the last not w, x or y), or, as NLTK adds, a whole
    two-letter stem vowel-consonant (any consonant)."""
    classes = _letter_classes(stem)
    if len(stem) == 2:
        return classes == "vc"
    return classes.endswith("cvc") and stem[-1] not in "wxy"


def _m_above(threshold: int) -> Condition:
    """Condition ``m > threshold`` on the stem."""
    return lambda stem: measure(stem) > threshold


def _apply_first_rule(word: str, rules: tuple[tuple[str, str, Condition], ...]) -> str:
    """Apply the first rule ``(suffix, replacement, condition)`` whose suffix ends ``word``.

    The rule's condition is checked on the stem (``word`` without the suffix); when it fails the word
    is left as it is, no later rule is tried. Tables list a suffix before any shorter suffix it ends
    with (-ational before -tional, -ement before -ment before -ent), which is Porter's "longest
    matching suffix" choice.
    """
    for suffix, replacement, condition in rules:
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + replacement if condition(stem) else word
    return word


def _step1a(word: str) -> str:
    """Plurals: -sses -> -ss, -ies -> -i (-ie in a four-letter word), -ss kept, -s removed."""
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("ies"):
        return word[:-3] + ("ie" if len(word) == 4 else "i")
    if word.endswith("ss") or not word.endswith("s"):
        return word
    return word[:-1]


def _step1b(word: str) -> str:
    """Past tenses and participles: -ied, -eed (m > 0), then -ed or -ing after a stem with a vowel."""
    if word.endswith("ied"):
        return word[:-3] + ("ie" if len(word) == 4 else "i")
    if word.endswith("eed"):
        stem = word[:-3]
        return stem + "ee" if measure(stem) > 0 else word
    for suffix in ("ed", "ing"):
        stem = word[: len(word) - len(suffix)]
        if word.endswith(suffix) and _has_vowel(stem):
            return _after_ed_or_ing(stem)
    return word


def _after_ed_or_ing(stem: str) -> str:
    """Tidy a stem that lost -ed or -ing: put back the e of -ate, -ble, -ize (conflat -> conflate),
    undouble a final consonant other than l, s, z (hopp -> hop, fall stays), add e to a short
    ``m = 1, *o`` stem (fil -> file)."""
    if stem.endswith(("at", "bl", "iz")):
        return stem + "e"
    if _ends_double_consonant(stem):
        return stem if stem[-1] in "lsz" else stem[:-1]
    if measure(stem) == 1 and _ends_cvc(stem):
        return stem + "e"
    return stem


def _step1c(word: str) -> str:
    """Final y -> i after a consonant that is not the word's first letter."""
    if word.endswith("y") and len(word) > 2 and _letter_classes(word)[-2] == "c":
        return word[:-1] + "i"
    return word


_M_ABOVE_0 = _m_above(0)
_M_ABOVE_1 = _m_above(1)

_STEP2_RULES: tuple[tuple[str, str, Condition], ...] = (
    ("ational", "ate", _M_ABOVE_0),
    ("tional", "tion", _M_ABOVE_0),
    ("enci", "ence", _M_ABOVE_0),
    ("anci", "ance", _M_ABOVE_0),
    ("izer", "ize", _M_ABOVE_0),
    ("bli", "ble", _M_ABOVE_0),
    ("entli", "ent", _M_ABOVE_0),
    ("eli", "e", _M_ABOVE_0),
    ("ousli", "ous", _M_ABOVE_0),
    ("ization", "ize", _M_ABOVE_0),
    ("ation", "ate", _M_ABOVE_0),
    ("ator", "ate", _M_ABOVE_0),
    ("alism", "al", _M_ABOVE_0),
    ("iveness", "ive", _M_ABOVE_0),
    ("fulness", "ful", _M_ABOVE_0),
    ("ousness", "ous", _M_ABOVE_0),
    ("aliti", "al", _M_ABOVE_0),
    ("iviti", "ive", _M_ABOVE_0),
    ("biliti", "ble", _M_ABOVE_0),
    ("fulli", "ful", _M_ABOVE_0),
    ("logi", "log", lambda stem: measure(stem + "l") > 0),
)


def _step2(word: str) -> str:
    """Double suffixes to single ones (m > 0): -ational -> -ate, -izer -> -ize, ...

    -alli -> -al (m > 0) comes first and the table then applies to its result (radicalli -> radical,
    rationalli -> rational -> rate); an -alli word with m = 0 is left alone.
    """
    if word.endswith("alli") and measure(word[:-4]) > 0:
        word = word[:-2]
    return _apply_first_rule(word, _STEP2_RULES)


_STEP3_RULES: tuple[tuple[str, str, Condition], ...] = (
    ("icate", "ic", _M_ABOVE_0),
    ("ative", "", _M_ABOVE_0),
    ("alize", "al", _M_ABOVE_0),
    ("iciti", "ic", _M_ABOVE_0),
    ("ical", "ic", _M_ABOVE_0),
    ("ful", "", _M_ABOVE_0),
    ("ness", "", _M_ABOVE_0),
)


def _step3(word: str) -> str:
    """-icate, -ative, -alize, -iciti, -ical, -ful, -ness (m > 0)."""
    return _apply_first_rule(word, _STEP3_RULES)


_STEP4_RULES: tuple[tuple[str, str, Condition], ...] = (
    ("al", "", _M_ABOVE_1),
    ("ance", "", _M_ABOVE_1),
    ("ence", "", _M_ABOVE_1),
    ("er", "", _M_ABOVE_1),
    ("ic", "", _M_ABOVE_1),
    ("able", "", _M_ABOVE_1),
    ("ible", "", _M_ABOVE_1),
    ("ant", "", _M_ABOVE_1),
    ("ement", "", _M_ABOVE_1),
    ("ment", "", _M_ABOVE_1),
    ("ent", "", _M_ABOVE_1),
    ("ion", "", lambda stem: measure(stem) > 1 and stem.endswith(("s", "t"))),
    ("ou", "", _M_ABOVE_1),
    ("ism", "", _M_ABOVE_1),
    ("ate", "", _M_ABOVE_1),
    ("iti", "", _M_ABOVE_1),
    ("ous", "", _M_ABOVE_1),
    ("ive", "", _M_ABOVE_1),
    ("ize", "", _M_ABOVE_1),
)


def _step4(word: str) -> str:
    """Remove a final suffix (-al, -ance, ..., -ize) from a stem with m > 1; -ion only after s or t."""
    return _apply_first_rule(word, _STEP4_RULES)


def _step5a(word: str) -> str:
    """Drop a final e when m > 1, or when m = 1 and the stem does not end ``*o`` (cease -> ceas, rate kept)."""
    if word.endswith("e"):
        stem = word[:-1]
        m = measure(stem)
        if m > 1 or (m == 1 and not _ends_cvc(stem)):
            return stem
    return word


def _step5b(word: str) -> str:
    """-ll -> -l when m > 1 (controll -> control, roll kept)."""
    if word.endswith("ll") and measure(word) > 1:
        return word[:-1]
    return word


_STEPS: tuple[Callable[[str], str], ...] = (_step1a, _step1b, _step1c, _step2, _step3, _step4, _step5a, _step5b)


@functools.lru_cache(maxsize=65536)
def porter_stem(word: str) -> str:
    """Porter stem of ``word`` exactly as NLTK's ``PorterStemmer().stem(word)`` (``NLTK_EXTENSIONS``).

    ``caresses -> caress``, ``ponies -> poni``, ``motoring -> motor``, ``generalization -> gener``,
    ``dying -> die``.
    """
    stem = word.lower()
    if stem in IRREGULAR_FORMS:
        return IRREGULAR_FORMS[stem]
    if len(word) <= 2:
        return stem
    for step in _STEPS:
        stem = step(stem)
    return stem
