"""TAPPA q-similarity: mechbench's closed form vs the reference's explicit ``T x T`` cosine matrix.

The reference (``MIRALab-USTC/LLM-TAPPA`` ``compute_q_sim_torch``) builds ``S[h] = qhat[h] qhat[h]^T`` and
averages its off-diagonal entries: ``heads x T x T`` floats. mechbench uses
``sum_{i != j} qhat_i . qhat_j = ||sum_i qhat_i||^2 - sum_i ||qhat_i||^2`` (``heads x T x d``). Each mode
runs in its own subprocess so peak RSS is its own; the script prints wall time, peak RSS and the two
values (they must agree), and writes JSON with ``--out``.

    python benchmarks/bench_tappa_qsim.py --heads 9 --dim 64 --lengths 1024 4096
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(mode: str, heads: int, dim: int, length: int) -> dict[str, float]:
    import torch

    from mechbench.analyses.tappa import q_similarity  # imported before timing (pandas, pydantic, ...)

    torch.set_num_threads(1)
    q = torch.randn(heads, length, dim, generator=torch.Generator().manual_seed(0))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "mechbench":
        value = float(q_similarity(q.float()).mean())
    else:  # the reference's explicit matrix, float32 as the model's queries
        qn = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        sim = qn @ qn.transpose(-1, -2)
        value = float(((sim.sum((-1, -2)) - sim.diagonal(dim1=-2, dim2=-1).sum(-1)) / (length * (length - 1))).mean())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "length": length, "seconds": seconds, "extra_rss_mb": (peak - base) / 1024, "q_sim": value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "HEADS", "DIM", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, heads, dim, length = args.child
        print(json.dumps(child(mode, int(heads), int(dim), int(length))))
        return
    results = []
    for length in args.lengths:
        for mode in ("mechbench", "reference"):
            output = subprocess.run([sys.executable, __file__, "--child", mode, str(args.heads), str(args.dim),
                                     str(length)], check=True, capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
            row = results[-1]
            print(f"T={length:6d} {mode:9s} {row['seconds']:8.3f} s  +{row['extra_rss_mb']:8.1f} MB  "
                  f"q_sim={row['q_sim']:.6f}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"heads": args.heads, "dim": args.dim, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
