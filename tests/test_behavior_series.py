"""Checkpoint series in, tidy rows out; DLA bookkeeping; all signals at once."""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from rllc import load_checkpoints
from rllc.behavior import (
    BehaviorError,
    ablation_scores,
    all_signals,
    composition_scores,
    direct_logit_attribution,
    engagement_stats,
    gini,
    head_dla,
    head_scores,
    participation_ratios,
    pr_trajectory_stats,
)
from rllc.behavior.planted import planted_induction_model
from rllc.data import random_tokens
from rllc.models import ModelConfig, Transformer

CFG = ModelConfig(n_layers=2, d_model=32, n_ctx=33, d_head=8, n_heads=2, d_vocab=40)
STEPS = [0, 50, 200]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A TransformerLens-format directory: config.json plus one state dict per step."""
    out = tmp_path_factory.mktemp("ckpts")
    (out / "config.json").write_text(pd.Series(CFG.to_dict()).to_json())
    for i, step in enumerate(STEPS):
        model = Transformer(ModelConfig.from_dict({**CFG.to_dict(), "seed": i}))
        save_file(model.state_dict(), str(out / f"model_{step}.safetensors"), metadata={"step": str(step)})
    return out


def test_a_directory_gives_one_block_of_rows_per_step(run_dir, capsys):
    df = head_scores(run_dir, progress=True)
    assert "head scores" in capsys.readouterr().err  # tqdm progress bar
    assert sorted(df["step"].unique()) == STEPS
    assert len(df) == len(STEPS) * 4 * 4  # steps x signals x heads
    series = load_checkpoints(run_dir)
    # the rows of one step are those of that checkpoint's model on its own
    alone = head_scores(series[50], step=50, progress=False)
    pd.testing.assert_frame_equal(df[df.step == 50].reset_index(drop=True), alone)
    some = composition_scores(series, steps=[200], progress=False)
    assert set(some["step"]) == {200}
    with pytest.raises(BehaviorError, match="not in"):
        composition_scores(series, steps=[7], progress=False)


def test_pr_statistics_over_a_series(run_dir):
    pr = participation_ratios(run_dir, n_examples=24, progress=False)
    stats = pr_trajectory_stats(pr)
    assert len(stats) == 2 * 4 and stats.groupby("signal").size().to_dict() == {"pr_integral": 4, "pr_spread": 4}
    integrals = stats[stats.signal == "pr_integral"]
    assert (integrals["value"] >= 0).all() and sorted(integrals["rank"]) == [0, 1, 2, 3]
    with pytest.raises(BehaviorError, match="step"):
        pr_trajectory_stats(participation_ratios(Transformer(ModelConfig.from_dict(CFG.to_dict())), progress=False))


def test_head_sets_ablate_together(run_dir):
    model = load_checkpoints(run_dir)[200]
    df = ablation_scores(model, heads=["0:*", ["0:1", "1:0"], (1, 1)], methods=["zero"], icl=False, progress=False)
    assert list(df["head"]) == ["0:*", "0:1+1:0", "1:1"]
    with pytest.raises(BehaviorError, match="not in this model"):
        ablation_scores(model, heads=["2:0"], progress=False)


def test_dla_plus_the_rest_of_the_residual_is_the_correct_logit():
    # planted (no LayerNorm, no biases, embeddings unread): DLA of all heads = the correct-token logit
    model = planted_induction_model()
    tokens = random_tokens(4, 49, 64, seed=2)
    dla = head_dla(model, tokens)
    logits = model(tokens)
    correct = logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(dla.sum((0, 1)), correct)
    # with LayerNorm: logit - b_U - ln_final.b.W_U = heads' DLA + the embedding's and b_O's share
    model = Transformer(ModelConfig(n_layers=2, d_model=24, n_ctx=16, d_head=6, n_heads=3, d_vocab=30, seed=1))
    with torch.no_grad():
        for p in (model.ln_final.w, model.ln_final.b, model.unembed.b_U, model.blocks[0].attn.b_O):
            p.normal_()
    tokens = random_tokens(3, 16, 30, seed=3)
    logits, cache = model.run_with_cache(tokens)
    target = tokens[:, 1:]
    u = model.unembed.W_U.T[target]
    rest = cache["hook_embed"] + model.blocks[0].attn.b_O + model.blocks[1].attn.b_O
    rest = rest[:, :-1] - rest[:, :-1].mean(-1, keepdim=True)
    rest_dla = (rest / cache["ln_final.hook_scale"][:, :-1] * model.ln_final.w * u).sum(-1)
    lhs = logits[:, :-1].gather(-1, target[..., None])[..., 0] - model.unembed.b_U[target] - u @ model.ln_final.b
    torch.testing.assert_close(head_dla(model, tokens).sum((0, 1)) + rest_dla, lhs, rtol=1e-4, atol=1e-4)


def test_engagement_statistics_across_heads():
    assert gini([1, 1, 1, 1]) == 0 and gini([0, 0, 0, 5]) == pytest.approx(0.75)
    dla = direct_logit_attribution(planted_induction_model(), progress=False)
    stats = engagement_stats(dla).set_index("signal")["value"]
    # only the induction head writes to the logits: all engagement in one of four heads
    assert stats["dla_abs_gini"] == pytest.approx(0.75)
    assert set(stats.index) == {"dla_abs_gini", "dla_abs_iqr", "dla_abs_kurtosis"}


def test_all_signals_for_one_checkpoint_are_tidy(run_dir):
    df = all_signals(run_dir, steps=[50], batch_size=8, pr_examples=16, score_batch_size=8, progress=False)
    assert list(df.columns[:7]) == ["step", "signal", "head", "sender", "receiver", "dataset", "value"]
    assert set(df["step"]) == {50}
    expected = {"previous_token", "current_token", "duplicate_token", "induction", "selectivity", "head_class",
                "participation_ratio", "ablation", "icl", "icl_ablated", "path_patching", "composition", "dla",
                "dla_abs", "dla_abs_gini", "dla_abs_iqr", "dla_abs_kurtosis"}
    assert set(df["signal"]) == expected
    numeric = df[df.signal != "head_class"]["value"].to_numpy(dtype=float)
    assert np.isfinite(numeric).all()
    pairs = df[df.signal.isin(["path_patching", "composition"])]
    assert pairs["head"].isna().all() and pairs[["sender", "receiver"]].notna().all().all()


def test_a_model_whose_heads_write_nothing_has_every_signal_defined():
    """W_O = 0 in every head (pruned, or zero-initialised output projections): composition 0, Gini 0, PR
    defined, the undefined kurtosis row left out; no NaN for `rllc probe` to store."""
    model = Transformer(ModelConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=40, seed=1))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.zero_()
    df = all_signals(model, batch_size=4, pr_examples=8, score_batch_size=4, progress=False)
    assert np.isfinite(df[df.signal != "head_class"]["value"].to_numpy(dtype=float)).all()
    assert (df[df.signal == "composition"]["value"] == 0).all()
    stats = df[df.signal.str.startswith("dla_abs_")].set_index("signal")["value"]
    assert stats["dla_abs_gini"] == 0 and "dla_abs_kurtosis" not in stats.index
