"""TAPPA main pass (kv q-similarity, pattern-type scores, RoPE band advantages): fused vs eager vs cache.

Methods, each in its own process on the same random token sequence (see ``harness.py``):

* ``hf-sdpa-forward``: the floor, a Hugging Face forward pass with fused SDPA attention;
* ``mechbench``: :func:`mechbench.analyses.tappa.record_main` with ``attention: auto`` (fused kernel,
  pattern scores and band advantages accumulated over row blocks);
* ``mechbench-eager``: the same on ``attention: eager`` (one layer's ``hook_pattern`` at a time);
* ``naive-run-with-cache``: ``run_with_cache`` of every pattern and post-RoPE q/k, then the pure
  functions (:func:`pattern_scores`, :func:`rope_band_advantage`, :func:`q_similarity`) per layer.

    python benchmarks/bench_tappa.py --lengths 512 2048 8192
"""

from __future__ import annotations

from typing import Any

from harness import Method, cache_infeasible, eager_infeasible, load_mechbench, main, random_tokens, sdpa_forward


def dataset(model: Any, length: int, seed: int) -> Any:
    from mechbench.core.dataset import TokenDataset

    return TokenDataset(tokens=[random_tokens(model, length, seed)[0]], example_ids=["x"], token_texts=[[]])


def recorded(attention: str) -> Method:
    def run(model: Any, length: int, seed: int) -> dict[str, Any]:
        from mechbench.analyses.tappa import TappaConfig, record_main

        reducer = record_main(model, dataset(model, length, seed), TappaConfig(attention=attention, batch_size=1),
                              progress=False)
        return {"kv_qsim": reducer.kv_qsim, "bands": reducer.bands, **reducer.scores}

    if attention == "auto":
        return Method("mechbench", "mechbench", load_mechbench, run)
    return Method("mechbench-eager", "eager", load_mechbench, run, eager_infeasible)


def naive(model: Any, length: int, seed: int) -> dict[str, Any]:
    import torch

    from mechbench.analyses.tappa import (
        TappaConfig,
        pattern_criteria,
        pattern_scores,
        q_similarity,
        rope_band_advantage,
    )

    config = TappaConfig()
    criteria = pattern_criteria(config)
    tokens = random_tokens(model, length, seed)
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith(
            ("hook_pattern", "hook_rot_q", "hook_rot_k")))
    kv_qsim, bands, scores = [], [], []
    for layer in range(model.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
        q = model.head_major("rot_q", cache[f"blocks.{layer}.attn.hook_rot_q"])[0]
        k = model.head_major("rot_k", cache[f"blocks.{layer}.attn.hook_rot_k"])[0]
        kv_qsim.append(q_similarity(q[:, -config.kv_window:], config.mode, config.rbf_sigma))
        bands.append(rope_band_advantage(q, k, pattern, config.rope_bands))
        scores.append(pattern_scores(pattern, criteria))
    outputs = {"kv_qsim": torch.stack(kv_qsim)[None].double(), "bands": torch.stack(bands)[None]}
    return outputs | {name: torch.stack([s[name] for s in scores])[None] for name in scores[0]}


METHODS = [sdpa_forward(), recorded("auto"), recorded("eager"),
           Method("naive-run-with-cache", "naive", load_mechbench, naive, cache_infeasible)]

if __name__ == "__main__":
    main("tappa", METHODS, (512, 2048, 8192), __doc__)
