"""The head_roles analysis: previous-token and induction heads found exactly on the planted model, through the
CLI and the store, the trained induction model's heads from Python, and one-line errors for impossible probes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mechbench.analyses.head_roles import HeadRolesConfig, probe_tokens, run_head_roles
from mechbench.cli import app
from mechbench.errors import ConfigError, DatasetError
from mechbench.models.toy import PLANTED_HEADS
from mechbench.store.result_store import ResultStore


def test_cli_finds_exactly_the_planted_previous_token_and_induction_heads(tmp_path):
    config = tmp_path / "roles.yaml"
    config.write_text(f"model: toy-planted\nstore: {tmp_path / 'store'}\nanalyses:\n"
                      "  head_roles: {block_length: 10, n_examples: 8}\n")
    result = CliRunner().invoke(app, ["analyze", "--config", str(config), "--run-id", "r", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "top 5 heads by induction_score" in result.output
    frame = ResultStore(tmp_path / "store").read(analysis="head_roles", run_id="r")
    assert frame["layer"].dtype == "Int64" and set(frame["block_length"]) == {10}
    for metric, head in (("induction_score", PLANTED_HEADS["induction"]),
                         ("previous_token_score", PLANTED_HEADS["previous_token"])):
        scores = {(int(r.layer), int(r.head)): r.value for r in frame[frame["metric"] == metric].itertuples()}
        assert len(scores) == 8 and scores.pop(head) > 0.999, metric
        assert max(scores.values()) < 0.2, metric


def test_trained_induction_model_has_its_induction_heads_in_layer_1():
    from mechbench.models.loading import load_model

    model = load_model("toy-induction")
    frame = run_head_roles(model, HeadRolesConfig(block_length=12, n_examples=16, seed=123, distinct=False),
                           progress=False)
    induction = frame[frame["metric"] == "induction_score"]
    assert induction.loc[induction["layer"] == 1, "value"].max() > 0.5
    assert induction.loc[induction["layer"] == 0, "value"].max() < 0.3
    tokens, has_bos = probe_tokens(model, HeadRolesConfig(block_length=12, n_examples=3))
    assert has_bos and tokens.shape == (3, 25) and (tokens[:, 1:13] == tokens[:, 13:]).all()
    assert all(len(set(row[1:13].tolist())) == 12 for row in tokens)  # distinct blocks by default


def test_impossible_probes_are_one_line_errors(planted):
    with pytest.raises(DatasetError, match=r"head_roles probe of 1 \+ 2 x 40 tokens.*lower head_roles.block_length"):
        probe_tokens(planted, HeadRolesConfig(block_length=40))
    with pytest.raises(ConfigError, match=r"^head_roles: a block of 20 distinct tokens needs 20 ids in \[1, 17\)"):
        probe_tokens(planted, HeadRolesConfig(block_length=20))
