"""Retrieval heads: mechbench's streaming decode vs the reference's `output_attentions=True` decode.

Both modes run the same needle-in-a-haystack trial (built-in needle 0 at 50 % depth), each in its
own subprocess so that peak RSS is its own:

* ``mechbench``: :func:`mechbench.analyses.retrieval.run_trial` — prefill once, then one token per
  step through the KV cache, the last query's row of each head reduced to its argmax inside the
  ``hook_pattern`` hook;
* ``reference``: what ``nightdessert/Retrieval_Head`` does — the Hugging Face model with eager
  attention, prefill ``prompt[:-1]`` with the cache, then every decode step with
  ``output_attentions=True`` and the argmax taken from the returned attention tensors.

It prints wall time and peak RSS per trial, the ratios mechbench / reference, checks that both
produce the same tokens and per-head scores, and writes the numbers as JSON (``--out``).

    python benchmarks/bench_retrieval.py --model smollm2-135m --length 2000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def child(mode: str, model_name: str, length: int, out: str, trial_file: str) -> dict[str, float]:
    """One mode in this process. ``mechbench`` builds the trial and saves it to ``trial_file``; ``reference``
    reads it from there (so its process never holds the TransformerBridge)."""
    import torch

    from mechbench.analyses.retrieval import MAX_NEW_TOKENS, run_trial, trial_head_scores
    from mechbench.models.loading import load_model
    from mechbench.models.registry import REGISTRY, hf_dir_for
    from mechbench.tasks.niah import build_trial, load_haystack, load_needles, stop_ids

    torch.set_num_threads(2)
    if mode == "mechbench":
        model = load_model(model_name)
        trial = build_trial(model, load_needles()[0], load_haystack(), length, 50)
        stop = stop_ids(model)
        torch.save({"trial": trial, "stop": stop}, trial_file)
    else:
        from transformers import AutoModelForCausalLM

        saved = torch.load(trial_file, weights_only=False)
        trial, stop = saved["trial"], saved["stop"]
        hf = AutoModelForCausalLM.from_pretrained(hf_dir_for(REGISTRY[model_name]), attn_implementation="eager",
                                                  dtype=torch.float32).eval()
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if mode == "mechbench":
        result = run_trial(model, trial, MAX_NEW_TOKENS, stop)
        generated, scores = result.decoding.generated, result.head_scores
    else:
        generated_ids, argmaxes = [], []
        with torch.no_grad():
            past = hf(input_ids=trial.prompt_ids[None, :-1], use_cache=True).past_key_values
            token = trial.prompt_ids[-1:]
            for _ in range(MAX_NEW_TOKENS):
                output = hf(input_ids=token[None], past_key_values=past, use_cache=True, output_attentions=True)
                past = output.past_key_values
                token = output.logits[0, -1].argmax().view(1)
                argmaxes.append(torch.stack([a[0, :, -1, :].argmax(-1) for a in output.attentions]))
                generated_ids.append(int(token))
                if generated_ids[-1] in stop:
                    break
        generated = torch.tensor(generated_ids)
        scores = trial_head_scores(torch.stack(argmaxes), generated, trial.prompt_ids, trial.answer_span)
    elapsed = time.perf_counter() - started
    torch.save({"generated": generated, "scores": scores}, out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": elapsed, "peak_rss_mb": peak, "rss_after_load_mb": loaded_rss,
            "above_model_mb": peak - loaded_rss, "prompt_tokens": int(trial.prompt_ids.numel()),
            "new_tokens": int(generated.numel())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--length", type=int, default=2000, help="NIAH context length in tokens")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/retrieval.json"))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.model, args.length, args.child[1],
                               "/tmp/mechbench-bench-retrieval-trial.pt")))
        return

    import torch

    results: dict[str, dict[str, float]] = {}
    outputs = {}
    for mode in ("mechbench", "reference"):
        path = f"/tmp/mechbench-bench-retrieval-{mode}.pt"
        command = [sys.executable, __file__, "--model", args.model, "--length", str(args.length), "--child", mode, path]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
        outputs[mode] = torch.load(path)
        print(f"{mode:10} {results[mode]['seconds']:8.1f} s  peak RSS {results[mode]['peak_rss_mb']:7.0f} MB  "
              f"above model {results[mode]['above_model_mb']:7.0f} MB  ({results[mode]['prompt_tokens']} prompt + "
              f"{results[mode]['new_tokens']} new tokens)", flush=True)
    same_tokens = torch.equal(outputs["mechbench"]["generated"], outputs["reference"]["generated"])
    score_difference = float((outputs["mechbench"]["scores"] - outputs["reference"]["scores"]).abs().max())
    ratios = {key: results["mechbench"][key] / results["reference"][key]
              for key in ("seconds", "peak_rss_mb", "above_model_mb")}
    print(f"same tokens: {same_tokens}; max |score difference| = {score_difference}; "
          f"ratios mechbench / reference: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "length": args.length, "results": results,
                                    "same_tokens": same_tokens, "max_score_difference": score_difference,
                                    "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
