"""Options of the circuits analysis (config block ``analyses.circuits``) and their model-free checks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from mechbench.analyses.circuits.metrics import CircuitRule, Direction
from mechbench.config import Seed, StrictModel
from mechbench.errors import ConfigError
from mechbench.tasks.circuit_tasks import BUILTIN_TASKS, load_pair_file

Method = Literal["activation_patching", "attribution_patching", "dla", "path_patching", "eap", "eap_ig"]
METHODS: tuple[Method, ...] = ("activation_patching", "attribution_patching", "dla", "path_patching", "eap", "eap_ig")
Ablation = Literal["mean", "corrupt", "zero"]


class CircuitsConfig(StrictModel):
    """Options of the ``circuits`` analysis (config block ``analyses.circuits``)."""

    tasks: list[str] = Field(["ioi", "colored_objects"], min_length=1, description="pair tasks: ioi, "
                             "colored_objects, induction (token ids, toy models) or a .jsonl of {clean, corrupt, "
                             "answer, wrong}; overlap is computed between every two")
    n_examples: PositiveInt = Field(16, description="prompt pairs per task (the first N of a user file)")
    methods: list[Method] = Field(list(METHODS), min_length=1, description="node methods (activation_patching, "
                                  "attribution_patching, dla, path_patching) and edge methods (eap, eap_ig)")
    directions: list[Direction] = Field(["noising", "denoising"], min_length=1,
                                        description="activation patching directions")
    mlps: bool = Field(True, description="score MLP blocks as nodes too (models with MLPs)")
    circuit_method: Method = Field("path_patching", description="the method whose scores define each task's "
                                   "circuit (eap/eap_ig: the heads touched by the chosen edges)")
    rule: CircuitRule = Field("top_p", description="circuit rule: top_p (percent per path-patching stage, "
                              "Merullo et al.), top_k, or threshold on |score|")
    rule_value: float = Field(5.0, gt=0, description="p (percent), k, or the threshold")
    edge_rule: CircuitRule = Field("top_k", description="rule for EAP / EAP-IG edges")
    edge_rule_value: float = Field(10, gt=0, description="edges kept (k), percent, or |score| threshold")
    stages: PositiveInt = Field(3, description="path-patching stages (logits, then the senders of each stage)")
    channels: list[Literal["q", "k", "v"]] = Field(["q", "k", "v"], min_length=1,
                                                   description="receiver inputs patched at stages after the first")
    position: Literal["all", "end"] = Field("all", description="positions a path-patching sender is patched "
                                            "at: all, or the end position only (the reference's default)")
    freeze_mlps: bool = Field(True, description="freeze MLP outputs to clean in path patching")
    ablation: Ablation = Field("mean", description="how non-circuit nodes are ablated for faithfulness: mean "
                               "(over the corrupt prompts), corrupt (own corrupt prompt) or zero")
    ig_steps: PositiveInt = Field(5, description="EAP-IG interpolation steps (reference default 30)")
    faithfulness_curve: bool = Field(False, description="also measure the normalised faithfulness of the "
                                     "circuit method's top-k items (edges for eap/eap_ig, nodes otherwise) at "
                                     "curve_points sizes from 1 to all; one ablated forward pass per size and batch")
    faithfulness_target: float | None = Field(None, gt=0, le=1, description="choose each task's circuit as "
                                              "the smallest size on the faithfulness curve whose normalised "
                                              "faithfulness reaches this (instead of rule / edge_rule); "
                                              "implies faithfulness_curve")
    curve_points: PositiveInt = Field(12, ge=2, description="sizes on the faithfulness curve (geometric)")
    n_permutations: PositiveInt = Field(1000, description="random head sets for the overlap baseline")
    seed: Seed = Field(0, description="seed of the task generators and the permutation baseline")
    batch_size: PositiveInt = Field(16, description="prompt pairs per forward (and backward) pass")

    @model_validator(mode="after")
    def _circuit_method_is_run(self) -> CircuitsConfig:
        if self.circuit_method not in self.methods:
            raise ValueError(f"circuit_method {self.circuit_method!r} must be one of methods {self.methods}")
        if self.wants_curve and self.circuit_method == "path_patching":
            raise ValueError("a faithfulness curve needs one ranking of items; path patching chooses heads per "
                             "stage: use another circuit_method or drop faithfulness_curve/faithfulness_target")
        return self

    @property
    def wants_curve(self) -> bool:
        """Whether a faithfulness curve is measured (asked for, or needed to meet a target)."""
        return self.faithfulness_curve or self.faithfulness_target is not None


def check_config(config: CircuitsConfig, data: bool = True) -> None:
    """Fail before any model is loaded on a rule value out of range or a missing task file."""
    for field, rule, value in (("rule", config.rule, config.rule_value),
                               ("edge_rule", config.edge_rule, config.edge_rule_value)):
        if rule == "top_p" and value > 100:
            raise ConfigError(f"circuits.{field}_value is a percentage for top_p; got {value:g}, use 0 < p <= 100")
        if rule == "top_k" and not float(value).is_integer():  # also refuses inf, which int() cannot convert
            raise ConfigError(f"circuits.{field}_value must be a whole number for top_k; got {value:g}")
    if len(set(config.tasks)) != len(config.tasks):
        raise ConfigError(f"circuits.tasks lists a task twice: {config.tasks}")
    if data:
        for task in config.tasks:
            if task not in BUILTIN_TASKS:
                load_pair_file(task, 1)

