"""Sink scores (+ massive activations): mechbench's fused path vs eager streaming vs ``run_with_cache``.

Methods, each in its own process on the same random token sequence (see ``harness.py``):

* ``hf-sdpa-forward``: the floor, a Hugging Face forward pass with fused SDPA attention;
* ``mechbench``: the sinks analysis's recording, ``attention: auto`` (the fused kernel; each layer's
  pattern summed block by block from q, k and the softmax normaliser) plus ``resid_post`` magnitudes;
* ``mechbench-eager``: the same reducers on ``attention: eager`` (one layer's ``hook_pattern`` at a time);
* ``naive-run-with-cache``: ``bridge.run_with_cache`` of every ``hook_pattern``, then the metric.

    python benchmarks/bench_sinks.py --lengths 512 2048 8192
"""

from __future__ import annotations

from typing import Any

from harness import Method, cache_infeasible, eager_infeasible, load_mechbench, main, random_tokens, sdpa_forward


def recorded(attention: str) -> Method:
    def run(model: Any, length: int, seed: int) -> dict[str, Any]:
        from mechbench.analyses.sinks import MassiveActivationReducer, SinkScoreReducer
        from mechbench.core.dataset import TokenDataset
        from mechbench.core.recorder import ATTENTION, Recorder

        tokens = random_tokens(model, length, seed)
        dataset = TokenDataset(tokens=[tokens[0]], example_ids=["x"], token_texts=[[]])
        scores = SinkScoreReducer(1, model.n_layers, model.n_heads, length, model.causal)
        massive = MassiveActivationReducer(1, model.n_layers, 3)
        Recorder(model, batch_size=1, progress=False).run(dataset, {ATTENTION: scores, "resid_post": massive},
                                                          attention=attention)
        return {"sink_scores": scores.scores[0], "massive": massive.values[0]}

    if attention == "auto":
        return Method("mechbench", "mechbench", load_mechbench, run)
    return Method("mechbench-eager", "eager", load_mechbench, run, eager_infeasible)


def naive(model: Any, length: int, seed: int) -> dict[str, Any]:
    import torch

    from mechbench.analyses.sinks import massive_activations, sink_scores

    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(random_tokens(model, length, seed), names_filter=lambda name: (
            name.endswith("hook_pattern") or name.endswith("hook_resid_post")))
    scores = torch.stack([sink_scores(cache[f"blocks.{layer}.attn.hook_pattern"])[0]
                          for layer in range(model.n_layers)])
    massive = torch.stack([massive_activations(cache[f"blocks.{layer}.hook_resid_post"][0])[0].double()
                           for layer in range(model.n_layers)])
    return {"sink_scores": scores, "massive": massive}


METHODS = [sdpa_forward(), recorded("auto"), recorded("eager"),
           Method("naive-run-with-cache", "naive", load_mechbench, naive, cache_infeasible)]

if __name__ == "__main__":
    main("sinks", METHODS, (512, 2048, 8192), __doc__)
