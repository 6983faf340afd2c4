"""Head-type scores and selectivity: planted truth and agreement with TransformerLens's head detector."""

import pytest
import torch
from transformer_lens import head_detector

from rllc.behavior import attention_tallies, classify_heads, head_scores, selectivity, target_mask
from rllc.behavior.planted import planted_induction_model
from rllc.models import ModelConfig, Transformer

PLANTED = {"previous_token": "0:0", "current_token": "0:1", "induction": "1:0"}


@pytest.fixture(scope="module")
def planted():
    return planted_induction_model()


def test_planted_heads_score_one_on_their_score_and_zero_elsewhere(planted):
    df = head_scores(planted, progress=False)
    table = df.pivot(index="head", columns="signal", values="value")
    for signal, head in PLANTED.items():
        assert table.loc[head, signal] > 0.99, (signal, table[signal])
        others = table[signal].drop(head)
        # off-target heads only pick up chance coincidences (repeats inside a span, BOS at q=1)
        assert (others < 0.05).all(), (signal, others)
    assert set(df["dataset"]) == {"random_tokens", "repeated_random"}
    assert list(df.columns) == ["step", "signal", "head", "dataset", "value"]


def test_selectivity_classifies_the_planted_heads(planted):
    sel = selectivity(planted, progress=False)
    classes = classify_heads(sel).set_index("head")["label"].to_dict()
    assert classes == {"0:0": "previous", "0:1": "self", "1:0": "induction", "1:1": "first"}
    # a uniform head is classified as nothing: every selectivity is 1
    uniform = Transformer(ModelConfig(n_layers=1, d_model=16, n_ctx=33, d_head=4, n_heads=2, d_vocab=50, seed=0))
    with torch.no_grad():
        uniform.blocks[0].attn.W_Q.zero_()
    sel_u = selectivity(uniform, progress=False)
    assert sel_u["value"].sub(1).abs().max() < 1e-5
    assert set(classify_heads(sel_u)["label"]) == {"unclassified"}


def test_target_masks_on_a_small_sequence():
    tokens = torch.tensor([[0, 5, 6, 5, 6]])
    ind = target_mask("induction", tokens)[0]
    dup = target_mask("duplicate", tokens)[0]
    assert ind.nonzero().tolist() == [[3, 2], [4, 3]]  # after the earlier 5 comes position 2, after the 6 position 3
    assert dup.nonzero().tolist() == [[3, 1], [4, 2]]
    assert target_mask("local", tokens, local_window=3)[0, 4].nonzero().flatten().tolist() == [1, 2]


@pytest.mark.parametrize("target,tl_name", [("previous", "previous_token_head"),
                                            ("duplicate", "duplicate_token_head"),
                                            ("induction", "induction_head")])
def test_scores_agree_with_transformer_lens_head_detector(target, tl_name):
    cfg = ModelConfig(n_layers=2, d_model=32, n_ctx=24, d_head=8, n_heads=3, d_vocab=20, seed=1)
    model = Transformer(cfg).eval()
    tokens = torch.tensor([[0] + [3, 9, 4, 7, 3, 12, 5] * 3])  # repeats make duplicate/induction targets
    _, cache = model.run_with_cache(tokens)
    detection = getattr(head_detector, f"get_{tl_name}_detection_pattern")(tokens)
    ours = attention_tallies(model, tokens, [target])[target]["score"]
    n = tokens.shape[1]
    valid_rows = ((detection.sum(-1) > 0) & (torch.arange(n) >= 1)).sum().item()
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head]
            tl = head_detector.compute_head_attention_similarity_score(
                pattern, detection, exclude_bos=False, exclude_current_token=False, error_measure="mul"
            )
            # TransformerLens averages over all n rows (rows without a target count 0); we over rows with one
            assert ours[layer, head].item() == pytest.approx(tl * n / valid_rows, rel=1e-5)
