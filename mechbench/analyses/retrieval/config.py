"""Options of the retrieval analysis and the checks that need no model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from mechbench.config import StrictModel
from mechbench.core.recorder import AttentionPath
from mechbench.errors import ConfigError
from mechbench.tasks.niah import ANSWER_BUFFER, BUILTIN, load_haystack, load_needles

#: Reference decode length (``self.decode(q_outputs, ..., 50)``).
MAX_NEW_TOKENS = 50


class MaskingConfig(StrictModel):
    """The masking check (config block ``analyses.retrieval.masking``)."""

    top_k: list[PositiveInt] = Field([5, 10, 20], min_length=1, description="numbers of heads to mask")
    n_random: NonNegativeInt = Field(3, description="random draws of k heads per k (reference: one)")
    exclude_top: NonNegativeInt = Field(100, description="random heads come from outside the top N (reference: 100)")


class RetrievalConfig(StrictModel):
    """Options of the ``retrieval`` analysis (config block ``analyses.retrieval``)."""

    needles: str = Field(BUILTIN, description="'builtin', or a .jsonl file of {needle, question, answer} lines "
                         "(the answer verbatim inside the needle)")
    haystack: str = Field(BUILTIN, description="'builtin', or a plain-text file (repeated when too short)")
    min_length: PositiveInt = Field(500, description="shortest context in tokens (reference --s)")
    max_length: PositiveInt = Field(2000, description="longest context in tokens (reference --e)")
    n_lengths: PositiveInt = Field(4, description="context lengths: round(linspace(min, max, n)) (reference: 20)")
    n_depths: PositiveInt = Field(5, description="needle depths: round(linspace(0, 100, n)) percent (reference: 10)")
    buffer: NonNegativeInt = Field(ANSWER_BUFFER, description="tokens reserved for template, question and answer")
    template: Literal["auto", "base", "chat"] = Field(
        "auto", description="prompt template; auto = chat when the tokenizer has a chat template")
    max_new_tokens: PositiveInt = Field(MAX_NEW_TOKENS, description="decode length (reference: 50)")
    use_kv_cache: bool = Field(True, description="decode with the KV cache when the model supports it")
    attention: AttentionPath = Field(
        "auto", description="detection trials: auto = fused kernel where the model allows it (argmax keys from "
        "q . k, no pattern), else eager hook_pattern; fused | eager. Masked trials always run eager")
    masking: MaskingConfig | None = Field(None, description="also mask the top-K vs K random heads and "
                                          "measure NIAH accuracy on the same trials")


def check_config(config: RetrievalConfig) -> None:
    """Fail before any model is loaded on a bad needle or haystack file or an empty length range."""
    load_needles(config.needles)
    load_haystack(config.haystack)
    if config.min_length > config.max_length:
        raise ConfigError(f"retrieval.min_length ({config.min_length}) is above retrieval.max_length "
                          f"({config.max_length}); swap them")
