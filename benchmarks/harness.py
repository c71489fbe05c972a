"""Shared harness of the per-analysis benchmarks: every (method, length) in its own subprocess.

A benchmark script lists :class:`Method` s — mechbench's way, the naive way (eager attention +
``run_with_cache``, or the paper's reference approach) and the floor (the Hugging Face forward pass
with fused SDPA attention) — and calls :func:`main`. Each method runs in a fresh Python process, so
its peak RSS (``ru_maxrss``) is its own; only :meth:`Method.run` is timed, after a load that also warms the
model up with a three-token forward pass (first-call set-up is not timed, for any method). Outputs of every method
are compared with mechbench's (max absolute difference), so a fast wrong answer shows. With ``--rounds N``
the methods of a length take turns N times and each keeps its fastest time (and largest peak); with
``--warm-runs K`` each process first runs its method K times untimed (steady state). The CSV has
one row per (method, length) and the growth exponents of time and of memory above the loaded model
(least squares of ``log y`` on ``log length``).

    python benchmarks/bench_sinks.py --lengths 512 2048 8192
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Outputs = dict[str, Any]


@dataclass(frozen=True)
class Method:
    """One way of computing an analysis's numbers."""

    name: str
    role: str  # "mechbench" | "naive" | "floor"
    load: Callable[[str], Any]  # model name -> state (not timed)
    run: Callable[[Any, int, int], Outputs]  # (state, length, seed) -> tensors to compare (timed)
    #: ``length -> reason`` when the method cannot run at that length on this machine (None: it can)
    infeasible: Callable[[int], str | None] = lambda length: None


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_tokens(model: Any, length: int, seed: int) -> Any:
    """``[1, length]`` random token ids (seeded) starting with the model's BOS, as every method gets them."""
    import torch

    vocab = model.vocab_size if hasattr(model, "vocab_size") else model.config.vocab_size
    tokens = torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(seed))
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    tokens[0, 0] = 1 if bos is None else bos
    return tokens


def load_mechbench(model_name: str) -> Any:
    """The model as mechbench loads it (a HookedModel around the TransformerBridge), warmed up: its one-time
    checks of the fast paths (fused attention, chunked logits; a few three-token forward passes, cached per
    model) run here, as they run once per model in an analysis session, not per input."""
    from mechbench.core.fused import supports_fused
    from mechbench.models.loading import load_model

    model = load_model(model_name)
    supports_fused(model)
    _ = model.unembeds_chunks
    return model


def cache_infeasible(length: int, limit_gib: float = 12.0) -> str | None:
    """Why ``run_with_cache`` of every pattern of SmolLM2 (30 layers x 9 heads, float32) cannot run, if it cannot."""
    size = 30 * 9 * length * length * 4
    return f"does not fit: the pattern cache alone is {size / 1024**3:.0f} GiB" if size > limit_gib * 1024**3 else None


def eager_infeasible(length: int) -> str | None:
    """Eager attention past 4k tokens takes minutes per layer here: skipped to keep the benchmark short."""
    return "skipped: eager attention past 4k tokens takes minutes per layer" if length > 4096 else None


def load_hf(model_name: str, attention: str) -> Any:
    """The registry model as a plain Hugging Face model with ``attention`` (``sdpa`` or ``eager``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mechbench.models.registry import REGISTRY, hf_dir_for

    model = AutoModelForCausalLM.from_pretrained(hf_dir_for(REGISTRY[model_name]), attn_implementation=attention,
                                                 dtype=torch.float32).eval()
    with torch.no_grad():  # warm-up, as every method gets one: first-call set-up is not timed
        model(input_ids=torch.tensor([[1, 2, 3]]))
    return model


def sdpa_forward() -> Method:
    """The floor: one Hugging Face forward pass with fused SDPA attention, logits at every position."""
    import torch

    def run(model: Any, length: int, seed: int) -> Outputs:
        with torch.no_grad():
            model(input_ids=random_tokens(model, length, seed))
        return {}

    return Method("hf-sdpa-forward", "floor", lambda name: load_hf(name, "sdpa"), run)


def _child(methods: Sequence[Method], name: str, model: str, length: int, seed: int, threads: int,
           out: str, warm_runs: int = 0) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    method = next(m for m in methods if m.name == name)
    state = method.load(model)
    loaded = rss_mb()
    for _ in range(warm_runs):  # steady state: kernels and buffers of this length's shapes already set up
        method.run(state, length, seed)
    started = time.perf_counter()
    outputs = method.run(state, length, seed)
    seconds = time.perf_counter() - started
    torch.save(outputs, out)
    return {"seconds": seconds, "peak_rss_mb": rss_mb(), "rss_after_load_mb": loaded}


def _max_difference(ours: Outputs, theirs: Outputs) -> float | None:
    shared = [key for key in ours if key in theirs]
    if not shared:
        return None
    if any(ours[key].shape != theirs[key].shape for key in shared):
        return math.inf  # e.g. a different number of generated tokens
    return max(float((ours[key].double() - theirs[key].double()).nan_to_num(0.0).abs().max()) for key in shared)


def _exponent(points: list[tuple[int, float]]) -> float | None:
    points = [(x, y) for x, y in points if y > 0]
    if len(points) < 2:
        return None
    xs, ys = [math.log(x) for x, _ in points], [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def _parsed(row: dict[str, str]) -> dict[str, Any]:
    """A row read back from a results CSV, numbers as numbers and empty cells left out."""
    parsed: dict[str, Any] = {}
    for key, value in row.items():
        if value == "" and key != "note":
            continue
        try:
            parsed[key] = int(value) if key in ("length", "threads", "rounds", "warm_runs") else float(value)
        except ValueError:
            parsed[key] = value
    return parsed


def _compare(rows: list[dict[str, Any]]) -> None:
    """Add each row's time and peak relative to its length's floor, and each method's growth exponents."""
    for row in rows:
        floor = next((r for r in rows if r["length"] == row["length"] and r["role"] == "floor" and "seconds" in r),
                     None)
        if floor is not None and "seconds" in row:
            row["time_vs_floor"] = row["seconds"] / floor["seconds"]
            row["memory_vs_floor"] = row["peak_rss_mb"] / floor["peak_rss_mb"]
    for name in dict.fromkeys(row["method"] for row in rows):
        mine = [r for r in rows if r["method"] == name and "seconds" in r]
        time_exp = _exponent([(r["length"], r["seconds"]) for r in mine])
        memory_exp = _exponent([(r["length"], r["above_model_mb"]) for r in mine])
        for r in mine:
            r["time_exponent"], r["memory_exponent"] = time_exp, memory_exp
        if time_exp is not None:
            print(f"{name:24} time ~ length^{time_exp:.2f}, memory above model ~ length^{memory_exp:.2f}")


def main(analysis: str, methods: Sequence[Method], default_lengths: Sequence[int], doc: str | None,
         setup: Callable[[str, int, int], None] | None = None) -> None:
    """Run every method at every length (each in a subprocess), print a table, write the CSV.

    ``setup(model, length, seed)``, when given, runs in this process before the methods of each length
    (e.g. to build an input every method then reads from a file).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(default_lengths))
    parser.add_argument("--methods", nargs="+", help="only these methods (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the methods of a length this many times in turn (each in a fresh process) and "
                             "keep each one's fastest time and largest peak: interleaving cancels slow drifts")
    parser.add_argument("--out", type=Path, default=Path(f"benchmarks/results/{analysis}.csv"))
    parser.add_argument("--warm-runs", type=int, default=0,
                        help="run each method this many times untimed before the timed run, in the same process "
                             "(the steady-state cost of one more input of this length)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of --out for (method, length) pairs this run does not measure")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "LENGTH", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, length, out = args.child
        print(json.dumps(_child(methods, name, args.model, int(length), args.seed, args.threads, out,
                                args.warm_runs)))
        return

    import torch

    chosen = [m for m in methods if args.methods is None or m.name in args.methods]
    rows: list[dict[str, Any]] = []
    for length in args.lengths:
        if setup is not None:
            setup(args.model, length, args.seed)
        outputs: dict[str, Outputs] = {}
        length_rows = {method.name: {"analysis": analysis, "model": args.model, "method": method.name,
                                     "role": method.role, "length": length, "threads": args.threads,
                                     "rounds": args.rounds, "warm_runs": args.warm_runs,
                                     "note": method.infeasible(length) or ""}
                       for method in chosen}
        for _ in range(args.rounds):
            for method in chosen:
                row = length_rows[method.name]
                if row["note"]:
                    continue
                path = f"/tmp/mechbench-bench-{analysis}-{method.name}-{length}.pt"
                command = [sys.executable, sys.argv[0], "--model", args.model, "--seed", str(args.seed),
                           "--threads", str(args.threads), "--warm-runs", str(args.warm_runs),
                           "--child", method.name, str(length), path]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    row["note"] = f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]}"
                    row.pop("seconds", None)
                    continue
                measured = json.loads(done.stdout.strip().splitlines()[-1])
                row["seconds"] = min(row.get("seconds", math.inf), measured["seconds"])
                row["peak_rss_mb"] = max(row.get("peak_rss_mb", 0.0), measured["peak_rss_mb"])
                row["rss_after_load_mb"] = measured["rss_after_load_mb"]
                row["above_model_mb"] = row["peak_rss_mb"] - row["rss_after_load_mb"]
                outputs[method.name] = torch.load(path, weights_only=False)
                print(f"{analysis:9} {length:6} {method.name:24} {measured['seconds']:8.2f} s  peak "
                      f"{measured['peak_rss_mb']:7.0f} MB", flush=True)
        for row in length_rows.values():
            rows.append(row)
            if "seconds" not in row:
                print(f"{analysis:9} {length:6} {row['method']:24} not run: {row['note']}", flush=True)
        reference = next((outputs[m.name] for m in chosen if m.role == "mechbench" and m.name in outputs), None)
        for row in rows:
            if row["length"] == length and "seconds" in row and reference is not None:
                row["max_abs_difference"] = _max_difference(reference, outputs[row["method"]])
    if args.merge and args.out.exists():  # keep the earlier rows of (method, length) pairs not measured now
        measured = {(row["method"], row["length"]) for row in rows}
        with args.out.open(newline="") as handle:
            rows = [_parsed(row) for row in csv.DictReader(handle)
                    if (row["method"], int(row["length"])) not in measured] + rows
        rows.sort(key=lambda row: (row["length"], [m.name for m in methods].index(row["method"])))
    _compare(rows)
    columns = ["analysis", "model", "method", "role", "length", "threads", "rounds", "warm_runs", "seconds",
               "peak_rss_mb",
               "rss_after_load_mb", "above_model_mb", "time_vs_floor", "memory_vs_floor", "max_abs_difference",
               "time_exponent", "memory_exponent", "note"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: f"{row[c]:.4g}" if isinstance(row.get(c), float) else row.get(c, "") for c in columns})
    print(f"wrote {args.out}")
