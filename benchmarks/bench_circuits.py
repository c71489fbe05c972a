"""Attribution patching over all nodes vs per-node activation patching, side by side.

Attribution patching estimates every node's noising effect from 2 forward passes and 1 backward
pass; activation patching runs one forward pass per node. Both run on the same IOI prompt pairs
(or the token-id induction task for toy models without a tokenizer); the script reports wall time,
the number of forward passes, the time ratio and how well the estimate agrees with the exact
scores (Pearson r, top-10 overlap), and writes one row per method to a CSV (``method`` column).

    OMP_NUM_THREADS=1 python benchmarks/bench_circuits.py --model smollm2-135m --n 4
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="ioi", help="ioi, colored_objects, induction or a .jsonl")
    parser.add_argument("--n", type=int, default=4, help="prompt pairs (one batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mlps", action="store_true", help="heads only")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "circuits.csv"))
    args = parser.parse_args()

    from mechbench.analyses import circuits
    from mechbench.core import patching
    from mechbench.models.loading import load_model
    from mechbench.tasks.circuit_tasks import make_task, tokenize_pairs

    model = load_model(args.model)
    task = "induction" if model.tokenizer is None and args.task in ("ioi", "colored_objects") else args.task
    pairs = tokenize_pairs(model, make_task(model, task, args.n, args.seed))
    nodes = patching.model_nodes(model, mlps=not args.no_mlps)
    base = circuits.baseline(model, pairs, [])
    results = []
    started = time.perf_counter()
    approx = circuits.attribution_patching(model, pairs, nodes, batch_size=args.n)
    results.append({"method": "attribution_patching", "seconds": time.perf_counter() - started,
                    "forward_passes": 2, "backward_passes": 1})
    started = time.perf_counter()
    exact = circuits.activation_patching(model, pairs, nodes, "noising", batch_size=args.n)
    results.append({"method": "activation_patching", "seconds": time.perf_counter() - started,
                    "forward_passes": 2 + len(nodes), "backward_passes": 0})
    pearson = float(torch.corrcoef(torch.stack([exact, approx]))[0, 1])
    top = min(10, len(nodes))
    top_exact = set(exact.abs().argsort(descending=True)[:top].tolist())
    top_approx = set(approx.abs().argsort(descending=True)[:top].tolist())
    ratio = results[1]["seconds"] / results[0]["seconds"]
    for row in results:
        row.update(model=model.name, task=task, n_pairs=len(pairs), n_nodes=len(nodes),
                   tokens=int(pairs.clean.shape[1]), threads=torch.get_num_threads(),
                   time_ratio_activation_over_attribution=round(ratio, 2), pearson=round(pearson, 4),
                   top10_overlap=len(top_exact & top_approx) / top,
                   clean_logit_diff=round(float(base["clean"].mean()), 4),
                   corrupt_logit_diff=round(float(base["corrupt"].mean()), 4))
        row["seconds"] = round(row["seconds"], 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    for row in results:
        print(row)
    print(f"activation / attribution wall time: {ratio:.1f}x; Pearson r = {pearson:.3f}; wrote {out}")


if __name__ == "__main__":
    main()
