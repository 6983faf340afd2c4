import json
import pathlib
import pickle

import pytest
import torch
from safetensors.torch import save_file

from rllc import CheckpointError, load_checkpoints
from rllc.models import ModelConfig, Transformer

CFG = dict(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=20, attn_only=True,
           positional_embedding_type="shortformer", normalization_type="LN")


def tl_dir(tmp_path, steps=(0, 100, 2000), suffix=".pt"):
    """A directory of TransformerLens-style state dicts, as a training script would leave it."""
    cfg = ModelConfig.from_dict(CFG)
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    models = {}
    for i, step in enumerate(steps):
        model = Transformer(ModelConfig.from_dict({**CFG, "seed": i}))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        state["blocks.0.attn.IGNORE"] = torch.tensor(float("-inf"))  # HookedTransformer buffers
        state["blocks.0.attn.mask"] = torch.ones(8, 8, dtype=torch.bool).tril()
        path = tmp_path / f"model_step{step}{suffix}"
        torch.save(state, path) if suffix != ".safetensors" else save_file(state, str(path))
        models[step] = model
    return cfg, models


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_transformer_lens_directory_is_lazy_step_ordered_and_exact(tmp_path, suffix):
    _, models = tl_dir(tmp_path, suffix=suffix)
    series = load_checkpoints(tmp_path)
    assert series.format == "transformer_lens"
    assert series.steps == [0, 100, 2000] and len(series) == 3
    tokens = torch.randint(0, 20, (2, 8))
    for step, model in series.items():
        torch.testing.assert_close(model(tokens), models[step](tokens), rtol=0, atol=0)
    with pytest.raises(KeyError, match="steps: 0, 100, 2000"):
        series[5]


def test_pickled_code_is_refused_and_not_executed(tmp_path):
    tl_dir(tmp_path, steps=(0,))
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    with open(tmp_path / "model_step0.pt", "wb") as f:
        pickle.dump({"embed.W_E": Payload()}, f, protocol=2)
    series = load_checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match=r"model_step0\.pt: refused to load.*nothing was executed"):
        series[0]
    assert not marker.exists()


def test_truncated_file_is_named(tmp_path):
    tl_dir(tmp_path, steps=(0, 10), suffix=".safetensors")
    path = tmp_path / "model_step10.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"model_step10\.safetensors: unreadable"):
        load_checkpoints(tmp_path)  # the step is read from the header, so the scan already sees it


def test_truncated_torch_file_is_named(tmp_path):
    tl_dir(tmp_path, steps=(0, 10))
    path = tmp_path / "model_step10.pt"
    path.write_bytes(path.read_bytes()[:300])
    series = load_checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match=r"model_step10\.pt: unreadable torch file"):
        series[10]


def test_mixed_architectures_are_named(tmp_path):
    tl_dir(tmp_path, steps=(0, 10), suffix=".safetensors")
    other = Transformer(ModelConfig.from_dict({**CFG, "d_model": 32, "d_head": 8}))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "model_step20.safetensors"))
    series = load_checkpoints(tmp_path)
    problems = series.verify()
    assert len(problems) == 1 and "model_step20.safetensors" in problems[0] and "shape mismatch" in problems[0]
    with pytest.raises(CheckpointError, match="different architectures"):
        series[20]


def test_empty_unknown_and_configless_directories(tmp_path):
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoints(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoints(tmp_path)
    torch.save({"x": torch.zeros(1)}, tmp_path / "model_1.pt")
    with pytest.raises(CheckpointError, match="no config"):
        load_checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoints(tmp_path / "missing")


def test_wrapped_state_dict_and_bad_config(tmp_path):
    tl_dir(tmp_path, steps=(0,))
    state = torch.load(tmp_path / "model_step0.pt", weights_only=True)
    torch.save({"model": state, "step": 0}, tmp_path / "model_step0.pt")
    assert load_checkpoints(tmp_path)[0] is not None
    (tmp_path / "config.json").write_text(json.dumps({"n_layers": 2}))
    with pytest.raises(CheckpointError, match=r"config\.json: config lacks required"):
        load_checkpoints(tmp_path)


def test_hugging_face_checkpoint_folders(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_models = {}
    for i, step in enumerate((10, 20)):
        torch.manual_seed(i)
        config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=4, vocab_size=30, n_positions=8)
        hf_models[step] = transformers.GPT2LMHeadModel(config).eval()
        hf_models[step].save_pretrained(tmp_path / f"checkpoint-{step}")
    series = load_checkpoints(tmp_path)
    assert series.format == "huggingface" and series.steps == [10, 20]
    tokens = torch.randint(0, 30, (2, 8))
    for step, model in series.items():
        expected = hf_models[step](tokens).logits
        torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=1e-5)
    # A folder of another size makes the directory mixed: named, not loaded.
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=4, vocab_size=30, n_positions=8)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "checkpoint-30")
    with pytest.raises(CheckpointError, match=r"mixed architectures: checkpoint-30 differs .* \['n_layers'\]"):
        load_checkpoints(tmp_path)
