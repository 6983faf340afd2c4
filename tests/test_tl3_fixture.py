"""Our Transformer against logits and activations recorded from transformer-lens 3.9.

The fixture (tests/fixtures/tl3, made by tests/fixtures/make_tl3_fixture.py)
holds HookedTransformer state dicts as saved by `state_dict()`, buffers included.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rllc import load_checkpoints
from rllc.models import ModelConfig, Transformer

FIXTURE = Path(__file__).parent / "fixtures" / "tl3"
CASES = ["attn_only_shortformer_ln", "attn_only_standard_nonorm", "mlp_standard_ln", "rotary_parallel_ln"]


def load_case(case: str, state_file: str = "state_dict.safetensors"):
    d = FIXTURE / case
    cfg = ModelConfig.from_dict(json.loads((d / "config.json").read_text()))
    if cfg.use_attn_result:
        cfg.use_attn_result = False
    model = Transformer(cfg)
    if state_file.endswith(".pt"):
        state = torch.load(d / state_file, weights_only=True)
    else:
        state = load_file(str(d / state_file))
    model.load_state_dict(state)
    return model.eval(), load_file(str(d / "tokens.safetensors"))["tokens"], d


@pytest.mark.parametrize("case", CASES)
def test_logits_and_hooks_match_transformer_lens_3(case):
    model, tokens, d = load_case(case)
    expected = load_file(str(d / "logits.safetensors"))["logits"]
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    for name, value in load_file(str(d / "activations.safetensors")).items():
        if name == "blocks.1.attn.hook_result":
            continue
        torch.testing.assert_close(cache[name], value, atol=1e-5, rtol=1e-5, msg=f"{case} {name}")


@pytest.mark.parametrize("state_file", ["state_dict.pt", "state_dict_tl300.safetensors"])
def test_other_saved_forms_load(state_file):
    model, tokens, d = load_case(CASES[0], state_file)
    torch.testing.assert_close(model(tokens), load_file(str(d / "logits.safetensors"))["logits"], atol=1e-5, rtol=1e-5)


def test_hook_result_matches():
    d = FIXTURE / CASES[0]
    cfg = ModelConfig.from_dict({**json.loads((d / "config.json").read_text()), "use_attn_result": True})
    model = Transformer(cfg)
    model.load_state_dict(load_file(str(d / "state_dict.safetensors")))
    _, cache = model.run_with_cache(load_file(str(d / "tokens.safetensors"))["tokens"])
    expected = load_file(str(d / "activations.safetensors"))["blocks.1.attn.hook_result"]
    torch.testing.assert_close(cache["blocks.1.attn.hook_result"], expected, atol=1e-5, rtol=1e-5)


def test_fixture_directory_loads_as_a_transformer_lens_series(tmp_path):
    d = FIXTURE / CASES[0]
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    (tmp_path / "ckpt_step_500.safetensors").write_bytes((d / "state_dict.safetensors").read_bytes())
    (tmp_path / "ckpt_step_1500.pt").write_bytes((d / "state_dict.pt").read_bytes())
    series = load_checkpoints(tmp_path)
    assert series.format == "transformer_lens" and series.steps == [500, 1500]
    tokens = load_file(str(d / "tokens.safetensors"))["tokens"]
    expected = load_file(str(d / "logits.safetensors"))["logits"]
    for _, model in series.items():
        torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=1e-5)
