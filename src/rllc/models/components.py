"""Components: named sets of coordinates of a model's parameters.

A component says which coordinates an estimator may move (weight refinement).
It is a name plus, for each parameter it touches, an index into that parameter:

* ``None``: the whole parameter;
* a tuple of ints/slices (basic indexing, so ``param[index]`` is a view), e.g.
  ``(6,)`` for head 6 of ``blocks.1.attn.W_Q``;
* a bool tensor of the parameter's shape.

Entries are kept in the model's parameter order, one per parameter. The
sampler draws its noise per touched parameter in that order (see
``rllc.sampling.kernel``), so the order is part of the reproducibility contract.

Specs accepted by :func:`resolve_component`:

====================  =========================================================
``None``, ``"model"``  every parameter
``"l:h"``              head h of layer l: its slices of W_Q, W_K, W_V, W_O,
                       b_Q, b_K, b_V (b_O is shared by the layer's heads and
                       belongs to no head)
``"l:*"``              all heads of layer l (the same, for every head)
``"layer:l"``          every parameter of block l (attention incl. b_O, norms,
                       MLP)
``"embed"``            token and positional embeddings (embed.W_E, pos_embed.W_pos)
``"unembed"``          unembed.W_U and unembed.b_U
a parameter name       that whole parameter, e.g. ``"blocks.0.attn.W_Q"``
a module prefix        every parameter under it, e.g. ``"blocks.0.ln1"``
a list of specs        their union (overlaps are merged, never counted twice)
``{name: index}``      explicit: index is None, an int, a slice, a tuple of
                       those, an index list/LongTensor, or a bool mask
a ``Component``        used as is (checked against the model)
====================  =========================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

Index = Union[None, tuple, Tensor]
ComponentSpec = Union[None, str, Sequence, Mapping, "Component"]

HEAD_PARAMS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
_HEAD = re.compile(r"^(\d+):(\d+|\*)$")
_LAYER = re.compile(r"^layer:(\d+)$")


class ComponentError(ValueError):
    """A component spec that does not name coordinates of this model."""


@dataclass(frozen=True, eq=False)  # eq=False: masks are tensors, compare components by identity
class Component:
    """A named set of (parameter name, index) pairs, in the model's parameter order."""

    name: str
    entries: tuple[tuple[str, Index], ...]
    n_coords: int

    @property
    def param_names(self) -> list[str]:
        return [name for name, _ in self.entries]

    def mask(self, name: str, param: Tensor) -> Tensor:
        """Bool mask of this component's coordinates in `param` (all False if untouched)."""
        entries = dict(self.entries)
        if name not in entries:
            return torch.zeros_like(param, dtype=torch.bool)
        return _to_mask(entries[name], param)

    def __str__(self) -> str:
        return self.name


def resolve_component(model: nn.Module, spec: ComponentSpec = None, *, name: str | None = None) -> Component:
    """Turn a spec (see the module docstring) into a :class:`Component` of `model`."""
    params = dict(model.named_parameters())
    raw = _collect(spec, params)  # checks names and indices
    if isinstance(spec, Component):
        in_model_order = spec.param_names == [n for n in params if n in set(spec.param_names)]
        if in_model_order and name is None:
            return spec
        return _build(name or spec.name, raw, params)
    label = name if name is not None else _default_name(spec)
    return _build(label, raw, params)


def heads(model: nn.Module) -> list[str]:
    """All heads of a TransformerLens-named model, as "l:h" strings, layer-major."""
    return [f"{layer}:{h}" for layer, n in enumerate(_head_counts(dict(model.named_parameters()))) for h in range(n)]


# --- parsing -----------------------------------------------------------------


def _collect(spec: ComponentSpec, params: dict[str, Tensor]) -> list[tuple[str, Index]]:
    """Raw (name, index) pairs for a spec; duplicates are merged later."""
    if spec is None:
        return [(n, None) for n in params]
    if isinstance(spec, Component):
        for pname, index in spec.entries:
            if pname not in params:
                raise ComponentError(f"component {spec.name!r} names {pname!r}, which this model does not have")
            _normalize_index(pname, index, params[pname])
        return list(spec.entries)
    if isinstance(spec, Mapping):
        out = []
        for pname, index in spec.items():
            if pname not in params:
                raise ComponentError(f"unknown parameter {pname!r}; {_describe_valid(params)}")
            out.append((pname, _normalize_index(pname, index, params[pname])))
        return out
    if isinstance(spec, str):
        return _parse_string(spec, params)
    if isinstance(spec, Sequence):
        if len(spec) == 0:
            raise ComponentError("an empty list of components selects nothing")
        return [pair for item in spec for pair in _collect(item, params)]
    raise ComponentError(f"cannot read a component from {type(spec).__name__}: {spec!r}")


def _parse_string(spec: str, params: dict[str, Tensor]) -> list[tuple[str, Index]]:
    s = spec.strip()
    if s in ("model", "all"):
        return [(n, None) for n in params]
    head = _HEAD.match(s)
    if head:
        layer = int(head.group(1))
        counts = _head_counts(params)
        if not counts:
            raise ComponentError(f"head {s!r}: this model has no TransformerLens attention weights "
                                 f"(blocks.<l>.attn.W_Q); {_describe_valid(params)}")
        if layer >= len(counts):
            raise ComponentError(f"head {s!r} does not exist: the model has layers 0..{len(counts) - 1} "
                                 f"with {counts[0]} heads each (0..{counts[0] - 1})")
        which = range(counts[layer]) if head.group(2) == "*" else [int(head.group(2))]
        if which[-1] >= counts[layer]:
            raise ComponentError(f"head {s!r} does not exist: layer {layer} has heads 0..{counts[layer] - 1}")
        out = []
        for h in which:
            for p in HEAD_PARAMS:
                pname = f"blocks.{layer}.attn.{p}"
                if pname in params:
                    out.append((pname, (h,)))
        return out
    layer = _LAYER.match(s)
    if layer:
        prefix = f"blocks.{layer.group(1)}."
        out = [(n, None) for n in params if n.startswith(prefix)]
        if not out:
            n_layers = len(_head_counts(params)) or len({n.split(".")[1] for n in params if n.startswith("blocks.")})
            raise ComponentError(f"layer {s!r} does not exist: the model has {n_layers} layers "
                                 f"(layer:0..layer:{max(n_layers - 1, 0)})")
        return out
    if s == "embed":
        out = [(n, None) for n in ("embed.W_E", "pos_embed.W_pos") if n in params]
        if not out:
            raise ComponentError(f"'embed': the model has no embed.W_E; {_describe_valid(params)}")
        return out
    if s == "unembed":
        out = [(n, None) for n in ("unembed.W_U", "unembed.b_U") if n in params]
        if not out:
            raise ComponentError(f"'unembed': the model has no unembed.W_U; {_describe_valid(params)}")
        return out
    if s in params:
        return [(s, None)]
    under = [(n, None) for n in params if n.startswith(s + ".")]
    if under:
        return under
    raise ComponentError(f"unknown component {spec!r}; {_describe_valid(params)}")


def _describe_valid(params: dict[str, Tensor]) -> str:
    counts = _head_counts(params)
    names = list(params)
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    heads_part = ""
    if counts:
        heads_part = (f"heads 'l:h' with l in 0..{len(counts) - 1}, h in 0..{counts[0] - 1}; "
                      f"'l:*'; 'layer:l'; 'embed'; 'unembed'; ")
    return f"valid: 'model'; {heads_part}a parameter name or module prefix ({shown}); or {{name: index}}"


def _head_counts(params: dict[str, Tensor]) -> list[int]:
    counts = []
    while f"blocks.{len(counts)}.attn.W_Q" in params:
        counts.append(params[f"blocks.{len(counts)}.attn.W_Q"].shape[0])
    return counts


def _default_name(spec: ComponentSpec) -> str:
    if spec is None:
        return "model"
    if isinstance(spec, str):
        return spec.strip()
    if isinstance(spec, Mapping):
        return "custom:" + "+".join(spec)
    if isinstance(spec, Sequence):
        return "+".join(_default_name(s) for s in spec)
    return str(spec)


# --- indices -------------------------------------------------------------------


def _normalize_index(pname: str, index: Any, param: Tensor) -> Index:
    """None, a basic-index tuple (a view), or a bool mask of the parameter's shape."""
    if index is None:
        return None
    if isinstance(index, (int, slice)):
        index = (index,)
    if isinstance(index, tuple) and all(isinstance(i, (int, slice)) for i in index):
        if len(index) > param.dim():
            raise ComponentError(f"index {index} has {len(index)} dims but {pname} has shape {tuple(param.shape)}")
        for dim, i in enumerate(index):
            if isinstance(i, int) and not -param.shape[dim] <= i < param.shape[dim]:
                raise ComponentError(f"index {i} out of range for dim {dim} of {pname} "
                                     f"(shape {tuple(param.shape)}, valid 0..{param.shape[dim] - 1})")
        return index
    if isinstance(index, Tensor) and index.dtype == torch.bool:
        if index.shape != param.shape:
            raise ComponentError(f"mask for {pname} has shape {tuple(index.shape)}, "
                                 f"the parameter has {tuple(param.shape)}")
        return index.to(device=param.device)
    # Anything else (index lists, LongTensors) becomes a mask, so that the
    # selected set, not the order of indices, defines the component.
    mask = torch.zeros(param.shape, dtype=torch.bool, device=param.device)
    try:
        mask[index] = True
    except (IndexError, TypeError, RuntimeError) as exc:
        raise ComponentError(f"cannot index {pname} (shape {tuple(param.shape)}) with {index!r}: {exc}") from exc
    return mask


def _to_mask(index: Index, param: Tensor) -> Tensor:
    if isinstance(index, Tensor):
        return index
    mask = torch.zeros(param.shape, dtype=torch.bool, device=param.device)
    mask[() if index is None else index] = True
    return mask


def _build(label: str, raw: list[tuple[str, Index]], params: dict[str, Tensor]) -> Component:
    """Merge indices per parameter (union) and order entries as the model's parameters."""
    by_param: dict[str, list[Index]] = {}
    for pname, index in raw:
        by_param.setdefault(pname, []).append(index)
    entries = []
    n_coords = 0
    for pname, param in params.items():  # model order
        if pname not in by_param:
            continue
        indices = by_param[pname]
        if len(indices) == 1:
            index = indices[0]
        else:
            index = _to_mask(indices[0], param)
            for other in indices[1:]:
                index = index | _to_mask(other, param)
        if isinstance(index, Tensor):
            count = int(index.sum())
            if count == 0:
                continue
            if count == param.numel():
                index = None
        entries.append((pname, index))
        n_coords += param.numel() if index is None else (
            int(index.sum()) if isinstance(index, Tensor) else param[index].numel())
    if not entries:
        raise ComponentError(f"component {label!r} selects no coordinates")
    return Component(label, tuple(entries), n_coords)
