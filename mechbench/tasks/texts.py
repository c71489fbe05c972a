"""Plain-text datasets: the built-in set shipped with the package, or a user's file.

The built-in set is eight short English passages written for mechbench (prose, a recipe, a
letter, a little Python code), each longer than 64 tokens for the default model, so the
sink-rate window of Gu et al. (first 64 tokens) is filled by every example.
"""

from __future__ import annotations

import json

from mechbench.errors import DatasetError
from mechbench.tasks.files import read_source

BUILTIN = "builtin"


def load_texts(source: str = BUILTIN, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Return ``(example_ids, texts)`` from ``"builtin"``, a ``.jsonl`` file (``{"id", "text"}`` per
    line) or a ``.txt`` file (one text per blank-line-separated paragraph).

    ``limit`` keeps the first ``limit`` texts. Raises DatasetError on a missing or empty source.
    """
    content, path = read_source(source, BUILTIN, "texts.jsonl",
                                f"text set {source!r} not found; give 'builtin', a .jsonl or a .txt file")
    if path is None:
        ids, texts = _parse_jsonl(content.splitlines(), "the built-in text set")
    elif path.suffix == ".jsonl":
        ids, texts = _parse_jsonl(content.splitlines(), str(path))
    else:
        texts = [p.strip() for p in content.split("\n\n") if p.strip()]
        ids = [f"{path.stem}-{i}" for i in range(len(texts))]
    if limit is not None:
        ids, texts = ids[:limit], texts[:limit]
    if not texts:
        raise DatasetError(f"text set {source!r} is empty; give at least one non-empty text")
    return ids, texts


def _parse_jsonl(lines: list[str], where: str) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record["text"]
        except (ValueError, KeyError, TypeError):
            raise DatasetError(f"{where} line {number} is not a JSON object with a 'text' field") from None
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{where} line {number} has an empty 'text'; remove the line or fill it")
        ids.append(str(record.get("id", f"text-{len(ids)}")))
        texts.append(text)
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{where} has duplicate ids; every text needs a unique 'id'")
    return ids, texts
