"""Retrieval heads: mechbench's scored decode vs a plain greedy decode and the reference's method.

All methods decode the same needle-in-a-haystack trial (built-in needle 0 at 50 % depth, built once
per length by the parent process), each in its own process (see ``harness.py``):

* ``hf-greedy-decode``: the floor, the Hugging Face model with SDPA attention, prefill ``prompt[:-1]``
  with the KV cache, then one token per step, no attention read;
* ``mechbench``: :func:`mechbench.analyses.retrieval.run_trial`, ``attention: auto`` (fused kernel:
  the step's argmax key from ``q . k`` of its one query row);
* ``mechbench-eager``: the same on ``attention: eager`` (``hook_pattern`` in every step);
* ``reference``: what ``nightdessert/Retrieval_Head`` does, eager attention and
  ``output_attentions=True`` on every decode step, the argmax taken from the returned tensors.

Every method's generated tokens and per-head scores are compared with mechbench's.

    python benchmarks/bench_retrieval.py --lengths 512 2048 4096
"""

from __future__ import annotations

from typing import Any

from harness import Method, load_hf, load_mechbench, main

TRIAL = "/tmp/mechbench-bench-retrieval-trial-{length}.pt"


def setup(model_name: str, length: int, seed: int) -> None:
    """Build the trial with mechbench's tokenizer-aware NIAH builder and save it for the methods."""
    import torch

    from mechbench.models.loading import load_model
    from mechbench.tasks.niah import build_trial, load_haystack, load_needles, stop_ids

    model = load_model(model_name)
    trial = build_trial(model, load_needles()[0], load_haystack(), length, 50)
    torch.save({"trial": trial, "stop": stop_ids(model)}, TRIAL.format(length=length))


def trial_for(length: int) -> tuple[Any, Any]:
    import torch

    saved = torch.load(TRIAL.format(length=length), weights_only=False)
    return saved["trial"], saved["stop"]


def mechbench(attention: str) -> Method:
    def run(model: Any, length: int, seed: int) -> dict[str, Any]:
        from mechbench.analyses.retrieval import MAX_NEW_TOKENS, run_trial

        trial, stop = trial_for(length)
        result = run_trial(model, trial, MAX_NEW_TOKENS, stop, attention=attention)
        return {"generated": result.decoding.generated, "scores": result.head_scores}

    return Method("mechbench" if attention == "auto" else "mechbench-eager",
                  "mechbench" if attention == "auto" else "eager", load_mechbench, run)


def hf_decode(attentions: bool) -> Method:
    """A greedy KV-cache decode of the plain HF model; with ``attentions``, the reference's scoring."""
    def run(hf: Any, length: int, seed: int) -> dict[str, Any]:
        import torch

        from mechbench.analyses.retrieval import MAX_NEW_TOKENS, trial_head_scores

        trial, stop = trial_for(length)
        generated, argmaxes = [], []
        with torch.no_grad():
            past = hf(input_ids=trial.prompt_ids[None, :-1], use_cache=True, logits_to_keep=1).past_key_values
            token = trial.prompt_ids[-1:]
            for _ in range(MAX_NEW_TOKENS):
                output = hf(input_ids=token[None], past_key_values=past, use_cache=True,
                            output_attentions=attentions)
                past = output.past_key_values
                token = output.logits[0, -1].argmax().view(1)
                if attentions:
                    argmaxes.append(torch.stack([a[0, :, -1, :].argmax(-1) for a in output.attentions]))
                generated.append(int(token))
                if generated[-1] in stop:
                    break
        outputs: dict[str, Any] = {"generated": torch.tensor(generated)}
        if attentions:
            outputs["scores"] = trial_head_scores(torch.stack(argmaxes), outputs["generated"], trial.prompt_ids,
                                                  trial.answer_span)
        return outputs

    if attentions:
        return Method("reference", "naive", lambda name: load_hf(name, "eager"), run)
    return Method("hf-greedy-decode", "floor", lambda name: load_hf(name, "sdpa"), run)


METHODS = [hf_decode(False), mechbench("auto"), mechbench("eager"), hf_decode(True)]

if __name__ == "__main__":
    main("retrieval", METHODS, (512, 2048, 4096), __doc__, setup=setup)
