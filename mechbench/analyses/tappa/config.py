"""The ``tappa`` config block and its checks (run before any model is loaded)."""

from __future__ import annotations

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from mechbench.analyses.tappa.metrics import Mode
from mechbench.config import StrictModel
from mechbench.core.recorder import AttentionPath
from mechbench.errors import ConfigError
from mechbench.tasks.texts import BUILTIN, load_texts


class TappaConfig(StrictModel):
    """Options of the ``tappa`` analysis (config block ``analyses.tappa``)."""

    texts: str = Field(BUILTIN, description="'builtin' (8 short passages), or a .jsonl / .txt file of texts")
    limit: PositiveInt | None = Field(None, description="use only the first N texts")
    max_tokens: PositiveInt = Field(128, description="truncate each text (or chunk, with join) to N tokens")
    join: bool = Field(False, description="join all texts with blank lines and cut the stream into chunks of "
                       "max_tokens tokens (for a long .txt such as a book)")
    prepend_bos: bool | None = Field(None, description="None = the tokenizer's setting; False = no special tokens")
    mode: Mode = Field("cosine", description="similarity of the reference: cosine (default), dot, pearson, "
                       "euclidean, l1, rbf, angular, kl (the last four are distances)")
    rbf_sigma: PositiveFloat = Field(1.0, description="sigma of the rbf mode")
    kv_window: PositiveInt = Field(32, description="kv variant: the last N tokens, post-RoPE queries (TAPPA: 32)")
    prune_window: PositiveInt = Field(1024, description="prune variant: window length, pre-RoPE (TAPPA: 1024)")
    prune_stride: PositiveInt = Field(256, description="prune variant: window stride (TAPPA: 256)")
    local_window: PositiveInt = Field(3, description="[INFERRED] lags 0..w count as diagonal/sequential")
    n_columns: PositiveInt = Field(2, description="[INFERRED] key columns that make a vertical (re-access) head")
    max_period: PositiveInt = Field(32, description="[INFERRED] longest period tried for periodic heads")
    mass_threshold: float = Field(0.5, gt=0.0, le=1.0, description="[INFERRED] a type needs this share of "
                                  "attention to label a head")
    diffuse_threshold: float = Field(0.8, gt=0.0, le=1.0, description="[INFERRED] normalised entropy above which "
                                     "an unlabelled head is diffuse (else mixed)")
    rope_bands: PositiveInt | None = Field(4, description="rotary frequency bands for the RoPE view (None = skip)")
    kv_eval: bool = Field(True, description="score TAPPA layer budgets vs uniform under token eviction")
    kv_budgets: list[PositiveInt] = Field([32], min_length=1, description="mean kept prompt tokens per layer")
    kv_prompt_fraction: float = Field(0.75, gt=0.0, lt=1.0, description="share of each text that is the prompt "
                                      "(compressed); the loss is on the rest")
    kv_kernel: PositiveInt = Field(5, description="pooling kernel of the eviction score (reference: 5)")
    kv_gamma: NonNegativeFloat = Field(200.0, description="weight of the variance in the eviction score "
                                       "(reference default: 200)")
    prune_eval: bool = Field(True, description="score TAPPA vs Block Influence layer-pruning orders")
    prune_ks: list[PositiveInt] = Field([1, 2], min_length=1, description="numbers of layers removed")
    beta: NonNegativeFloat = Field(0.3, description="weight of 1 - q_norm (TAPPA: 0.2 Llama-2, 0.3 Llama-3.1, "
                                   "0.1 Qwen-2.5)")
    heldout_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="last share of texts held out for the "
                                    "pruning loss; the rest score the layers")
    batch_size: PositiveInt = Field(4, description="texts per forward pass (memory grows with it)")
    attention: AttentionPath = Field("auto", description="how the main pass reads pattern rows: fused (rebuilt "
                                     "block by block from q, k and the softmax normaliser; memory linear in the "
                                     "context), eager (hook_pattern, one [head, T, T] per layer) or auto (fused "
                                     "where the model supports it); the pruning and KV-eviction passes stay eager")


def check_config(config: TappaConfig, data: bool = True) -> None:
    """Fail before any model is loaded on inconsistent options or (``data``) a missing or empty text set."""
    if config.prune_stride > config.prune_window:
        raise ConfigError(f"tappa.prune_stride ({config.prune_stride}) is above tappa.prune_window "
                          f"({config.prune_window}), so tokens between windows are never seen; lower the stride")
    small = [b for b in config.kv_budgets if b < config.kv_window]
    if config.kv_eval and small:
        raise ConfigError(f"tappa.kv_budgets {small} are below tappa.kv_window ({config.kv_window}), the tokens "
                          "every layer keeps; raise the budgets or lower kv_window")
    if data:
        ids, _ = load_texts(config.texts, config.limit)
        if config.prune_eval and not config.join and len(ids) < 2:
            raise ConfigError(f"tappa.prune_eval needs at least 2 texts (scored and held out), {config.texts!r} has "
                              f"{len(ids)}; give more texts, use join, or set prune_eval: false")
