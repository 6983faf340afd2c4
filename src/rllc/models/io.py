"""Reading checkpoint files safely: the one place that opens weights, and the checkpoint errors.

Safetensors files hold tensors only. Torch files go through ``torch.load(weights_only=True)``, which
refuses pickled code; when it refuses, `rllc.models.safety` tells corrupt bytes from code-running
pickles without executing anything. Both loaders, rllc/TransformerLens (`rllc.models.checkpoints`) and
Hugging Face (`rllc.models.hf`), read through these functions, passing the error class they raise, so the
no-code-execution guarantee has one home. Nothing here imports either loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from rllc.models.safety import load_error


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be used; the message names it and the fix."""


def read_json(path: Path, error: type[Exception] = CheckpointError, *, fix: str = "restore or rewrite the file") -> Any:
    """A JSON file's content; unreadable or invalid JSON is `error`, naming the file and `fix`."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e}); {fix}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot be read ({e})") from e


def read_safetensors(path: Path, error: type[Exception] = CheckpointError) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU."""
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise error(f"{path}: unreadable safetensors file ({e}); it may be truncated or corrupt") from e


def read_torch_file(path: Path, error: type[Exception] = CheckpointError) -> Any:
    """The object of a torch file, loaded with weights_only=True (no code runs); a refusal is `error`
    saying whether the file is corrupt or holds code (rllc.models.safety)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt bytes and code-running pickles alike: rllc.models.safety tells which
        raise error(load_error(Path(path), e)) from e


def safetensors_metadata(path: Path, error: type[Exception] = CheckpointError
                         ) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Header metadata and tensor shapes, without reading the tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            return f.metadata() or {}, shapes
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{path}: unreadable safetensors file ({e}); it may be truncated or corrupt") from e
