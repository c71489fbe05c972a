"""Utterances for speech-to-text analyses: a text to say (synthesised at run time) or a WAV file and its text.

The shipped set (``data/utterances.jsonl``) holds six short English sentences written for mechbench,
without digits or abbreviations, so the reference words are exactly what a listener writes; they are
spoken by espeak-ng when a run needs them. A user's ``.jsonl`` gives ``{id, text}`` (synthesised) or
``{id, wav, text}`` (their recording; a relative ``wav`` path is taken relative to the ``.jsonl`` file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mechbench.tasks.files import jsonl_records, text_field

BUILTIN = "builtin"


@dataclass(frozen=True)
class Utterance:
    """What was said (the WER reference) and, for a recording, where it is (None: synthesise ``text``)."""

    id: str
    text: str
    wav: Path | None = None


def load_utterances(source: str = BUILTIN, limit: int | None = None) -> list[Utterance]:
    """Utterances from ``"builtin"`` or a ``.jsonl`` of ``{id?, text, wav?}`` lines (the first ``limit``)."""
    utterances = []
    for number, record, where in jsonl_records(source, BUILTIN, "utterances.jsonl", "utterance", "id, text, wav?"):
        wav = text_field(record, "wav", number, where, required=False)
        base = Path(source).expanduser().parent
        utterances.append(Utterance(record["id"], str(text_field(record, "text", number, where)),
                                    None if wav is None else base / Path(wav).expanduser()))
    return utterances[:limit]
