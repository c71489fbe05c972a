"""WAAD / FAI recording (head spans, WAAD, FAI, response-token entropies): fused vs eager vs cache.

The input is one random token sequence whose last 75 % is the "response" (the rows WAAD and FAI
read); methods, each in its own process (see ``harness.py``):

* ``hf-sdpa-forward``: the floor, a Hugging Face forward pass with fused SDPA attention;
* ``mechbench``: the distance analysis's recording, ``attention: auto`` (fused kernel, response rows
  block by block) with the entropies from the same pass's logits;
* ``mechbench-eager``: the same on ``attention: eager``;
* ``naive-run-with-cache``: ``run_with_cache`` of every pattern, then :func:`head_spans`,
  :func:`waad`, :func:`fai` per layer and the entropies from the logits.

    python benchmarks/bench_distance.py --lengths 512 2048 8192
"""

from __future__ import annotations

from typing import Any

from harness import Method, cache_infeasible, eager_infeasible, load_mechbench, main, random_tokens, sdpa_forward


def prompt_length(length: int) -> int:
    return length // 4


def recorded(attention: str) -> Method:
    def run(model: Any, length: int, seed: int) -> dict[str, Any]:
        from mechbench.analyses.waad_fai import DistanceConfig, record_distance
        from mechbench.core.dataset import TokenDataset

        dataset = TokenDataset(tokens=[random_tokens(model, length, seed)[0]], example_ids=["x"], token_texts=[[]])
        reducer = record_distance(model, dataset, [prompt_length(length)],
                                  DistanceConfig(attention=attention, layers="all", batch_size=1), progress=False)
        return {"spans": reducer.spans[0], "waad": reducer.waad[0], "fai": reducer.fai[0],
                "entropy": reducer.entropy[0]}

    if attention == "auto":
        return Method("mechbench", "mechbench", load_mechbench, run)
    return Method("mechbench-eager", "eager", load_mechbench, run, eager_infeasible)


def naive(model: Any, length: int, seed: int) -> dict[str, Any]:
    import torch

    from mechbench.analyses.waad_fai import DistanceConfig, fai, head_spans, next_token_entropy, waad

    config, prompt = DistanceConfig(), prompt_length(length)
    with torch.no_grad():
        logits, cache = model.bridge.run_with_cache(random_tokens(model, length, seed),
                                                    names_filter=lambda name: name.endswith("hook_pattern"))
    rows = (prompt, length)
    patterns = [cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(model.n_layers)]
    return {"spans": torch.stack([head_spans(p, rows) for p in patterns]),
            "waad": torch.stack([waad(p, rows, config.window) for p in patterns]),
            "fai": torch.stack([fai(p, rows, config.h_lo, config.h_hi) for p in patterns]),
            "entropy": next_token_entropy(logits[0, prompt - 1:length - 1]).double()}


METHODS = [sdpa_forward(), recorded("auto"), recorded("eager"),
           Method("naive-run-with-cache", "naive", load_mechbench, naive, cache_infeasible)]

if __name__ == "__main__":
    main("distance", METHODS, (512, 2048, 8192), __doc__)
