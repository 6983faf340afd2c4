"""Checkpoint directories: this project's own, TransformerLens state dicts, Hugging Face.

`load_checkpoints(path)` scans a directory once (file names and JSON only) and
returns a lazy, step-ordered `CheckpointSeries`; weights are read only when a
step is asked for. Nothing here unpickles arbitrary objects: every file is read
through `rllc.models.io` (the one home of safe reading and of CheckpointError),
where `.pt/.pth/.bin` files go through `torch.load(weights_only=True)`, which
refuses code, and `rllc.models.safety` says whether a refused file is corrupt
or a pickle that would run code (the error names the file either way).

Formats, in the order they are recognised:

* ``rllc``: written by `rllc train`: `config.json` with ``"format": "rllc"``,
  `tokenizer.json`, `step_00000100.safetensors`, ..., `metrics.jsonl`.
* ``huggingface``: GPT-2 / GPT-NeoX (Pythia) folders `checkpoint-N/`, `step-N/`
  or `stepN/`, each with its own `config.json` (or the directory itself is one
  such folder).
* ``transformer_lens``: HookedTransformer state dicts (`.pt`, `.pth`,
  `.safetensors`) beside a config JSON holding TransformerLens config fields;
  the step is read from safetensors metadata (``step``) or else from the last
  number in the file name.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from rllc.models import io
from rllc.models.config import ConfigError, ModelConfig
from rllc.models.io import CheckpointError, safetensors_metadata
from rllc.models.safety import torch_file_problem
from rllc.models.transformer import DERIVED_BUFFER_SUFFIXES, Transformer

RLLC_FORMAT = "rllc"
CONFIG_NAMES = ("config.json", "cfg.json", "model_config.json", "hooked_transformer_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
HF_DIR_PATTERN = re.compile(r"^(?:checkpoint-|step-?|global_step)(\d+)$")
STEP_FILE_PATTERN = re.compile(r"^step_(\d+)\.safetensors$")


def step_filename(step: int) -> str:
    return f"step_{step:08d}.safetensors"


def read_json(path: Path) -> dict:
    data = io.read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors or torch file without executing any code (rllc.models.io)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return io.read_safetensors(path)
    return unwrap_state_dict(io.read_torch_file(path), path)


def unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """Training scripts often save {'model': state_dict, 'step': ...}; take the tensors."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors, or one under 'state_dict'/'model')")


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of `Transformer(cfg)`'s state dict, without allocating its weights."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}


def check_shapes(found: dict[str, tuple], expected: dict[str, tuple], path: Path) -> None:
    found = {k: v for k, v in found.items() if not k.endswith(DERIVED_BUFFER_SUFFIXES)}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: {found[k]} != {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:5]}")
        raise CheckpointError(
            f"{path}: wrong architecture: its weights do not match the directory's config ({'; '.join(parts)}); "
            "checkpoints of different architectures cannot share a directory"
        )


@dataclass
class CheckpointSeries:
    """A lazy, step-ordered series of checkpoints. `series[step]` loads a model."""

    path: Path
    format: str
    config: ModelConfig
    files: dict[int, Path]
    tokenizer_path: Path | None = None
    problems: list[str] = field(default_factory=list)
    _hf_configs: dict[int, dict] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_shapes(self.config)

    @property
    def steps(self) -> list[int]:
        return sorted(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[int]:
        return iter(self.steps)

    def __contains__(self, step: int) -> bool:
        return step in self.files

    def __getitem__(self, step: int) -> Transformer:
        model = Transformer(self.config)
        model.load_state_dict(self.state_dict(step))
        return model.eval()

    def items(self) -> Iterator[tuple[int, Transformer]]:
        for step in self.steps:
            yield step, self[step]

    def state_dict(self, step: int) -> dict[str, torch.Tensor]:
        if step not in self.files:
            raise KeyError(f"step {step} is not in {self.path} (steps: {compress_steps(self.steps)})")
        path = self.files[step]
        if self.format == "huggingface":
            from rllc.models.hf import read_hf_checkpoint

            _, state_dict = read_hf_checkpoint(path)
        else:
            state_dict = read_state_dict(path)
        check_shapes({k: tuple(v.shape) for k, v in state_dict.items()}, self.expected_shapes, path)
        return state_dict

    def metrics(self) -> list[dict]:
        """Training/eval losses logged per checkpoint (rllc format only)."""
        log = self.path / "metrics.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def tokenizer(self):
        if self.tokenizer_path is None:
            raise CheckpointError(f"{self.path}: no tokenizer.json in this checkpoint directory")
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.tokenizer_path))

    def verify(self, full: bool = False) -> list[str]:
        """Check every checkpoint against the config; returns the problems found.

        Without reading tensors: safetensors headers against the config, torch files for corrupt bytes or
        code-running pickles (rllc.models.safety), Hugging Face folders for their weight files. `full=True`
        loads every file (the only check of a torch file's shapes).
        """
        problems = []
        for step in self.steps:
            path = self.files[step]
            try:
                if full:
                    self.state_dict(step)
                elif self.format == "huggingface":
                    from rllc.models.hf import hf_weights_problems

                    problems += hf_weights_problems(path)
                elif path.suffix != ".safetensors":
                    problem = torch_file_problem(path)
                    if problem:
                        problems.append(problem)
                else:
                    _, shapes = safetensors_metadata(path)
                    check_shapes(shapes, self.expected_shapes, path)
            except CheckpointError as e:
                problems.append(str(e))
        return problems


def compress_steps(steps: list[int], max_items: int = 12) -> str:
    if len(steps) <= max_items:
        return ", ".join(map(str, steps))
    head = ", ".join(map(str, steps[: max_items // 2]))
    tail = ", ".join(map(str, steps[-max_items // 2 :]))
    return f"{head}, ... ({len(steps) - max_items} more) ..., {tail}"


def load_checkpoints(path: str | Path) -> CheckpointSeries:
    """Scan a checkpoint directory and return its lazy, step-ordered series."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; pass the folder that holds the checkpoints")
    if not any(path.iterdir()):
        raise CheckpointError(f"{path}: the directory is empty; train into it with `rllc train --out {path}`")
    config_path = path / "config.json"
    if config_path.exists():
        config = read_json(config_path)
        if config.get("format") == RLLC_FORMAT:
            return scan_rllc(path, config)
        if "model_type" in config:
            return scan_huggingface(path)
    if any(HF_DIR_PATTERN.match(p.name) for p in path.iterdir() if p.is_dir()):
        return scan_huggingface(path)
    return scan_transformer_lens(path)


def scan_rllc(path: Path, config: dict) -> CheckpointSeries:
    if "model" not in config:
        raise CheckpointError(f"{path / 'config.json'}: rllc config lacks its 'model' section")
    cfg = model_config(config["model"], path / "config.json")
    files, problems = {}, []
    for p in sorted(path.glob("*.safetensors")):
        m = STEP_FILE_PATTERN.match(p.name)
        if m:
            files[int(m.group(1))] = p
        else:
            problems.append(f"ignored {p.name}: not named step_NNNNNNNN.safetensors")
    for p in path.glob("*.tmp*"):
        problems.append(f"ignored {p.name}: an unfinished write (the run was interrupted while saving)")
    if not files:
        raise CheckpointError(f"{path}: an rllc run directory without any step_*.safetensors checkpoint yet")
    tok = path / "tokenizer.json"
    return CheckpointSeries(path, RLLC_FORMAT, cfg, files, tok if tok.exists() else None, problems)


def model_config(d: dict, source: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(d)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: {e}") from e


def scan_transformer_lens(path: Path) -> CheckpointSeries:
    weight_files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not weight_files:
        names = ", ".join(sorted(p.name for p in path.iterdir())[:8])
        raise CheckpointError(
            f"{path}: unknown checkpoint format: no rllc config.json, no Hugging Face checkpoint-N/ "
            f"folders and no .safetensors/.pt/.pth files (found: {names})"
        )
    config_file = next((path / n for n in CONFIG_NAMES if (path / n).exists()), None)
    if config_file is None:
        raise CheckpointError(
            f"{path}: {len(weight_files)} weight file(s) but no config; add a config.json holding the "
            "TransformerLens config fields (n_layers, d_model, n_ctx, d_head, n_heads, d_vocab, ...)"
        )
    cfg = model_config(read_json(config_file), config_file)
    files: dict[int, Path] = {}
    problems = []
    for p in weight_files:
        step = step_from_metadata(p)
        if step is None:
            numbers = re.findall(r"\d+", p.stem)
            if not numbers:
                if len(weight_files) == 1:
                    step = 0
                else:
                    problems.append(f"ignored {p.name}: no step in its name or metadata")
                    continue
            else:
                step = int(numbers[-1])
        if step in files:
            raise CheckpointError(f"{path}: {files[step].name} and {p.name} both claim step {step}; remove one")
        files[step] = p
    tok = path / "tokenizer.json"
    return CheckpointSeries(path, "transformer_lens", cfg, files, tok if tok.exists() else None, problems)


def step_from_metadata(p: Path) -> int | None:
    if p.suffix != ".safetensors":
        return None
    meta, _ = safetensors_metadata(p)
    step = meta.get("step")
    return int(step) if step is not None and str(step).isdigit() else None


def scan_huggingface(path: Path) -> CheckpointSeries:
    from rllc.models.hf import hf_model_config

    if (path / "config.json").exists() and "model_type" in read_json(path / "config.json"):
        folders = {hf_step(path): path}
    else:
        folders = {}
        for p in path.iterdir():
            m = HF_DIR_PATTERN.match(p.name)
            if p.is_dir() and m:
                folders[int(m.group(1))] = p
    configs, problems = {}, []
    for step, folder in sorted(folders.items()):
        cfg_path = folder / "config.json"
        if not cfg_path.exists():
            raise CheckpointError(f"{folder}: Hugging Face checkpoint folder without config.json")
        configs[step] = read_json(cfg_path)
    converted = {}
    for step, c in configs.items():
        try:
            converted[step] = hf_model_config(c).to_dict()
        except ValueError as e:
            raise CheckpointError(f"{folders[step] / 'config.json'}: {e}") from e
    reference_step = min(configs)
    cfg = model_config(converted[reference_step], folders[reference_step] / "config.json")
    for step, other in converted.items():
        if other != converted[reference_step]:
            diff = {k for k, v in converted[reference_step].items() if other.get(k) != v}
            raise CheckpointError(
                f"{path}: mixed architectures: {folders[step].name} differs from "
                f"{folders[reference_step].name} in {sorted(diff)}"
            )
    tok = next((f / "tokenizer.json" for f in folders.values() if (f / "tokenizer.json").exists()), None)
    return CheckpointSeries(path, "huggingface", cfg, folders, tok, problems, configs)


def hf_step(folder: Path) -> int:
    """Step of a single Hugging Face model folder: trainer_state.json, else its name, else 0."""
    state = folder / "trainer_state.json"
    if state.exists():
        return int(read_json(state).get("global_step", 0))
    m = HF_DIR_PATTERN.match(folder.name)
    return int(m.group(1)) if m else 0
