"""Options of the sinks analysis: the ``analyses.sinks`` config block and its checks."""

from __future__ import annotations

from pydantic import Field, NonNegativeInt, PositiveInt

from mechbench.config import StrictModel
from mechbench.core.recorder import AttentionPath
from mechbench.tasks.classification import (
    BUILTIN_SENTIMENT,
    SENTIMENT_LABELS,
    SENTIMENT_TEMPLATE,
    load_classification,
)
from mechbench.tasks.texts import BUILTIN, load_texts


class CalibrationConfig(StrictModel):
    """ACT calibration block (``analyses.sinks.calibration``); absent = not run."""

    task: str = Field(BUILTIN_SENTIMENT, description="'sentiment' (built-in) or a .jsonl of {id, text, label}")
    template: str = Field(SENTIMENT_TEMPLATE, description="prompt template with a {text} placeholder")
    labels: tuple[str, ...] = Field(SENTIMENT_LABELS, min_length=2, description="label words, in order")
    calibration_size: PositiveInt = Field(40, description="first N examples search heads; the rest evaluate")
    beta: float = Field(0.4, ge=0.0, le=1.0, description="sink columns are scaled by beta (ACT: 0.4)")
    threshold: float = Field(0.1, gt=0.0, lt=1.0, description="sink detection threshold (ACT: 0.1)")
    layers: list[NonNegativeInt] | None = Field(None, description="candidate layers; None = ACT's 2..L-2")
    heads: list[tuple[NonNegativeInt, NonNegativeInt]] | None = Field(
        None, description="calibrate these (layer, head) pairs and skip the search")
    text_loss: bool = Field(True, description="also measure next-token loss on the analysis texts")
    batch_size: PositiveInt = Field(16, description="prompts per forward pass of the head search and scoring")


class StreamingConfig(StrictModel):
    """StreamingLLM block (``analyses.sinks.streaming``); absent = not run."""

    texts: str = Field(BUILTIN, description="texts joined by blank lines into one long sequence")
    max_tokens: PositiveInt = Field(1024, description="truncate the joined text to N tokens")
    start_size: NonNegativeInt = Field(4, description="sink tokens kept (StreamingLLM: 4)")
    recent_size: PositiveInt = Field(64, description="recent tokens kept")


class SinksConfig(StrictModel):
    """Options of the ``sinks`` analysis (config block ``analyses.sinks``)."""

    texts: str = Field(BUILTIN, description="'builtin', or a .jsonl / .txt file of texts")
    limit: PositiveInt | None = Field(None, description="use only the first N texts")
    max_tokens: PositiveInt = Field(64, description="truncate each text to its first N tokens (Gu et al.: 64)")
    epsilon: float = Field(0.3, gt=0.0, lt=1.0, description="sink-rate threshold on the sink score (Gu et al.: 0.3)")
    hidden_threshold: float = Field(0.1, gt=0.0, lt=1.0, description="hidden-sink threshold (ACT: 0.1)")
    hidden_min_queries: PositiveInt = Field(
        1, description="ignore hidden sinks seen by fewer queries (1 = ACT's rule; the last keys of local heads "
        "otherwise count as sinks)")
    massive_top_k: PositiveInt = Field(3, description="top |h| entries kept per layer and text (Sun et al.: 3)")
    massive_min_value: float = Field(100.0, gt=0.0, description="massive if |h| exceeds this (Sun et al.: 100)")
    massive_min_ratio: float = Field(1000.0, gt=0.0, description="... and is this many times the median (1000)")
    batch_size: PositiveInt = Field(4, description="texts per forward pass (memory grows with it)")
    attention: AttentionPath = Field(
        "auto", description="how patterns are read: auto = the fused kernel where the model allows it (exact rows "
        "from q, k and the softmax normaliser, memory linear in context), else eager hook_pattern; fused | eager")
    prepend_bos: bool | None = Field(
        None, description="None = the loaded tokenizer's setting (TransformerBridge turns add_bos_token on, so "
        "SmolLM2 inputs start with <|im_start|>); False = no special tokens, the plain HF tokenizer of Gu et al.; "
        "True = force a BOS")
    calibration: CalibrationConfig | None = Field(None, description="ACT calibration with head search "
                                                  "(Yu et al. 2024); absent: not run")
    streaming: StreamingConfig | None = Field(None, description="StreamingLLM cache check (Xiao et al. 2023); "
                                              "absent: not run")


def check_config(config: SinksConfig) -> None:
    """Fail before any model is loaded when a text set or the classification set is missing or unusable."""
    load_texts(config.texts, config.limit)
    if config.calibration is not None:
        task = load_classification(config.calibration.task, config.calibration.template, config.calibration.labels)
        task.split(config.calibration.calibration_size)
    if config.streaming is not None:
        load_texts(config.streaming.texts)
