"""Sink scores: mechbench's streaming Recorder vs the naive `run_with_cache`, side by side.

Each mode runs in its own subprocess (so peak RSS is its own) on the same random token sequence:

* ``streaming``: ``run_sinks``-style recording, one layer's pattern reduced to ``[heads, T]`` and freed;
* ``cache-patterns``: ``bridge.run_with_cache(names_filter=hook_pattern)``, then the same metric;
* ``cache-all`` (``--all-hooks``): ``run_with_cache`` with every hook, as a notebook user would.

It prints wall time, peak RSS and RSS above the loaded model, checks that all modes give the same
scores (max abs difference), and writes the numbers as JSON (``--out``).

    python benchmarks/bench_sinks.py --model smollm2-135m --length 2048
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def child(mode: str, model_name: str, length: int, seed: int, scores_out: str) -> dict[str, float]:
    import torch

    from mechbench.analyses.sinks import SinkScoreReducer, sink_scores
    from mechbench.core.dataset import TokenDataset
    from mechbench.core.recorder import Recorder
    from mechbench.models.loading import load_model

    torch.set_num_threads(2)
    model = load_model(model_name)
    vocab = model.bridge.cfg.d_vocab
    tokens = torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(seed))
    if model.tokenizer is not None and model.tokenizer.bos_token_id is not None:
        tokens[0, 0] = model.tokenizer.bos_token_id
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if mode == "streaming":
        dataset = TokenDataset(tokens=[tokens[0]], example_ids=["x"], token_texts=[[]])
        reducer = SinkScoreReducer(1, model.n_layers, model.n_heads, length, model.causal)
        Recorder(model, batch_size=1, progress=False).run(dataset, {"pattern": reducer})
        scores = reducer.scores[0]
    else:
        names = None if mode == "cache-all" else (lambda name: name.endswith("hook_pattern"))
        with torch.no_grad():
            _, cache = model.bridge.run_with_cache(tokens, names_filter=names)
        scores = torch.stack([sink_scores(cache[f"blocks.{layer}.attn.hook_pattern"])[0]
                              for layer in range(model.n_layers)])
        del cache
    elapsed = time.perf_counter() - started
    torch.save(scores, scores_out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": elapsed, "peak_rss_mb": peak, "rss_after_load_mb": loaded_rss,
            "above_model_mb": peak - loaded_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-hooks", action="store_true", help="also measure run_with_cache with every hook")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sinks.json"))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "SCORES_OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.model, args.length, args.seed, args.child[1])))
        return

    import torch

    modes = ["streaming", "cache-patterns"] + (["cache-all"] if args.all_hooks else [])
    results: dict[str, dict[str, float]] = {}
    scores = {}
    for mode in modes:
        scores_path = f"/tmp/mechbench-bench-{mode}.pt"
        command = [sys.executable, __file__, "--model", args.model, "--length", str(args.length),
                   "--seed", str(args.seed), "--child", mode, scores_path]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
        scores[mode] = torch.load(scores_path)
        print(f"{mode:15} {results[mode]['seconds']:8.1f} s  peak RSS {results[mode]['peak_rss_mb']:8.0f} MB  "
              f"above model {results[mode]['above_model_mb']:8.0f} MB", flush=True)
    differences = {m: float((scores[m] - scores["streaming"]).abs().max()) for m in modes[1:]}
    ratio = results["streaming"]["peak_rss_mb"] / results["cache-patterns"]["peak_rss_mb"]
    print(f"max |streaming - cache| = {differences}; peak RSS ratio streaming / cache-patterns = {ratio:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "length": args.length, "results": results,
                                    "max_abs_difference": differences, "peak_ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
