"""Check :func:`mechbench.core.porter.porter_stem` against NLTK and write ``tests/data/porter_nltk.tsv``.

Needs NLTK, which mechbench itself no longer depends on: ``pip install nltk``. The tests only read
the fixture this script writes; they never import NLTK.

Words compared (all distinct, lower-case):

* ``natural``: the ROUGE tokens (``[a-z0-9]+`` after lower-casing, as ``rouge_score``) of
  ``mechbench/data/haystack.txt`` and ``mechbench/data/*.jsonl``, the alphabetic entries of the
  SmolLM2 tokenizer's vocabulary (leading ``Ġ`` removed, ``^[a-z]{2,}$`` kept) and hand-picked
  tricky cases (:data:`TRICKY`);
* ``synthetic``: every suffix a rule tests for (:data:`RULE_SUFFIXES`) appended to a deterministic
  sample of vocabulary words and to every short stem over a small alphabet, and every string of up
  to four letters over ``aeiysbltwxz1``, which reach the measure, ``*o`` and y cases that real
  words seldom do.

``porter_stem(w) == PorterStemmer().stem(w)`` (default mode ``NLTK_EXTENSIONS``) must hold for every
word; the script prints the counts and any mismatch, and writes the fixture only when there is none.
The fixture keeps about 3,000 rows: every tricky case, up to two examples of every pair (rule suffix
the word ends with, change stemming makes to its ending) -- unchanged words included, so that a
rule's failing condition is covered too -- and a deterministic sample (by SHA-1 of the word) of the
natural words.

    PYTHONPATH=. python benchmarks/make_porter_fixture.py
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import sys
from pathlib import Path

from mechbench.core.porter import porter_stem

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "mechbench" / "data"
TOKENIZER = Path.home() / ".cache" / "mechbench" / "models" / "smollm2-135m" / "tokenizer.json"
OUT = ROOT / "tests" / "data" / "porter_nltk.tsv"
FIXTURE_ROWS = 3000
EXAMPLES_PER_CASE = 2

#: Words that exercise NLTK's departures from the paper, the paper's own examples and edge cases, by rule.
TRICKY_BY_RULE: dict[str, str] = {
    "irregular forms and neighbours": "sky skies dying lying tying news innings inning outings outing cannings "
    "canning howe proceed exceed succeed dies died ties tied lies lied spies spied flies flied cries cried dyed dye",
    "step 1a": "caresses caress ponies cats ss s a is as us bus gas was this kiss kisses glasses",
    "step 1b": "feed agreed bleed deed need speed freed guaranteed eed plastered bled motoring sing singing "
    "conflated troubled sized hoping hopping tanned falling hissing fizzed failing filing owing axed bowed boxed "
    "agreeing seeing being doing ring rings hoped ied ed ing",
    "step 1c": "happy spy fly try enjoy boy by toy syzygy yyyy ayy",
    "step 2": "relational conditional rational valenci hesitanci digitizer conformabli radicalli differentli vileli "
    "analogousli vietnamization predication operator feudalism decisiveness hopefulness callousness formaliti "
    "sensitiviti sensibiliti generously generally finally really rationally hopefulli geologi theologi "
    "archaeologi analogi logi sensational dutifully personally",
    "step 3": "triplicate formative formalize electriciti electrical hopeful goodness usefulness",
    "step 4": "revival allowance inference airliner gyroscopic adjustable defensible irritant replacement "
    "adjustment dependent adoption homologou communism activate angulariti homologous effective bowdlerize "
    "generalization generalizations cement opinion religion",
    "step 5": "probate rate cease controll roll ace ooze",
    "short words and digits": "be me we it ox ow ay yy 123abc abc123 1990s 2nd 3rd 42 a1ing aa11ed",
}
TRICKY = tuple(dict.fromkeys(word for words in TRICKY_BY_RULE.values() for word in words.split()))

#: Every suffix some rule tests for (steps 1a-5b and NLTK's additions), by step.
RULE_SUFFIXES_BY_STEP: dict[str, str] = {
    "1a": "sses ies ss s",
    "1b": "ied eed ed ing at bl iz",
    "1c": "y",
    "2": "ational tional enci anci izer bli abli alli entli eli ousli ization ation ator alism iveness fulness "
    "ousness aliti iviti biliti fulli logi",
    "3": "icate ative alize iciti ical ful ness",
    "4": "al ance ence er ic able ible ant ement ment ent ion sion tion ou ism ate iti ous ive ize",
    "5": "e ll",
}
RULE_SUFFIXES = tuple(sorted({suffix for suffixes in RULE_SUFFIXES_BY_STEP.values() for suffix in suffixes.split()}))


def rouge_tokens(text: str) -> list[str]:
    """Lower-case, non-alphanumerics to spaces, split (``rouge_score``'s tokenisation)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def vocabulary_words(tokenizer: Path) -> set[str]:
    """Alphabetic entries of a byte-level BPE vocabulary, without the leading-space marker ``Ġ``."""
    vocab = json.loads(tokenizer.read_text(encoding="utf-8"))["model"]["vocab"]
    return {word for token in vocab if re.fullmatch(r"[a-z]{2,}", word := token.removeprefix("Ġ"))}


def natural_words(tokenizer: Path) -> set[str]:
    """Words of the built-in data files, of the tokenizer's vocabulary and of :data:`TRICKY`."""
    words = set(TRICKY) | vocabulary_words(tokenizer)
    for path in [DATA / "haystack.txt", *sorted(DATA.glob("*.jsonl"))]:
        words.update(rouge_tokens(path.read_text(encoding="utf-8")))
    return words


def sha1_order(word: str) -> str:
    return hashlib.sha1(word.encode()).hexdigest()


def synthetic_words(natural: set[str]) -> set[str]:
    """Rule suffixes on sampled words and short stems, and every short string (see the module docstring)."""
    bases = sorted(natural, key=sha1_order)[:1500]
    short_alphabet = "aeiysbltwxz1"
    short = {"".join(letters) for n in range(1, 5) for letters in itertools.product(short_alphabet, repeat=n)}
    short_stems = {"".join(letters) for n in range(1, 4) for letters in itertools.product("aybtlsw", repeat=n)}
    with_suffix = {base + suffix for base in bases + sorted(short_stems) for suffix in RULE_SUFFIXES}
    return short | with_suffix


def case_of(word: str, stem: str) -> tuple[str, str, str]:
    """Which rule suffix ``word`` ends with (the longest of :data:`RULE_SUFFIXES`, or "") and what
    stemming did to its end: (suffix, removed ending, added ending), the endings after the longest
    common prefix of word and stem."""
    suffix = max((s for s in RULE_SUFFIXES if word.endswith(s)), key=len, default="")
    prefix = 0
    while prefix < min(len(word), len(stem)) and word[prefix] == stem[prefix]:
        prefix += 1
    return suffix, word[prefix:], stem[prefix:]


def fixture_words(natural: set[str], synthetic: set[str], stems: dict[str, str]) -> list[str]:
    """The tricky cases, up to :data:`EXAMPLES_PER_CASE` words per :func:`case_of` (natural words
    first), then a SHA-1-ordered sample of the natural words, :data:`FIXTURE_ROWS` in all."""
    chosen = dict.fromkeys(TRICKY)
    examples: dict[tuple[str, str, str], int] = {}
    for word in sorted(natural) + sorted(synthetic):
        case = case_of(word, stems[word])
        if examples.get(case, 0) < EXAMPLES_PER_CASE:
            examples[case] = examples.get(case, 0) + 1
            chosen[word] = None
    for word in sorted(natural, key=sha1_order):
        if len(chosen) >= FIXTURE_ROWS:
            break
        chosen[word] = None
    return sorted(chosen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="SmolLM2 tokenizer.json")
    parser.add_argument("--out", type=Path, default=OUT, help="fixture to write")
    args = parser.parse_args()

    import nltk
    from nltk.stem.porter import PorterStemmer

    stemmer = PorterStemmer()
    natural = natural_words(args.tokenizer)
    synthetic = synthetic_words(natural) - natural
    stems = {word: stemmer.stem(word) for word in natural | synthetic}
    mismatches = sorted(word for word, stem in stems.items() if porter_stem(word) != stem)
    print(f"NLTK {nltk.__version__}, mode {stemmer.mode}: compared {len(natural)} natural and "
          f"{len(synthetic)} synthetic words, {len(mismatches)} mismatches")
    for word in mismatches[:50]:
        print(f"  {word}: nltk {stems[word]!r}, porter_stem {porter_stem(word)!r}")
    if mismatches:
        return 1

    rows = fixture_words(natural, synthetic, stems)
    header = [
        f"# NLTK {nltk.__version__} PorterStemmer() stems, mode {stemmer.mode} (the stemmer of rouge_score's "
        "use_stemmer=True), for tests/test_porter.py.",
        "# Made by: PYTHONPATH=. python benchmarks/make_porter_fixture.py (see its docstring).",
        f"# Compared: {len(natural)} natural words (ROUGE tokens of mechbench/data/haystack.txt and "
        "mechbench/data/*.jsonl, SmolLM2-135M tokenizer vocabulary entries ^[a-z]{2,}$ without 'Ġ', tricky "
        f"cases) and {len(synthetic)} synthetic ones (rule suffixes on sampled and short stems, all strings "
        "of <= 4 letters over aeiysbltwxz1); 0 mismatches with mechbench.core.porter.porter_stem.",
        f"# Kept here: {len(rows)} rows (tricky cases; up to {EXAMPLES_PER_CASE} examples of each pair (rule "
        "suffix the word ends with, change to its ending); a SHA-1-ordered sample). Columns: word<TAB>stem.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header + [f"{word}\t{stems[word]}" for word in rows]) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} rows to {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
