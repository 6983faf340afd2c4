"""Hessian-vector products of a loss restricted to one component's coordinates.

The loss is seen as a function of a flat vector theta holding the component's
coordinates (in the component's entry order, row-major inside each
parameter); every other parameter is a constant. The Hessian of that function
is the component's diagonal block of the full Hessian.

Products are double backward on a retained graph: for each batch the forward
pass and the first backward (``create_graph=True``) are built once, and every
product H_b v is one more backward through that graph (see the package
docstring for the measurements behind this choice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from rllc.models.components import Component, ComponentSpec, resolve_component
from rllc.losses import BatchStream, LossFn, TeacherTargets, check_finite_weights, next_token_loss, teacher_loss


VECTORIZE_BELOW = 4096  # coordinates


class _LossModule(nn.Module):
    """`loss_fn(model, batch)` as a module, so that functional_call can swap the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


class ComponentParams:
    """Maps a flat vector of a component's coordinates to a full set of model parameters."""

    def __init__(self, model: nn.Module, component: Component):
        params = dict(model.named_parameters())
        dtypes = {params[name].dtype for name, _ in component.entries}
        if len(dtypes) != 1:
            raise TypeError(f"component {component.name!r} spans parameters of several dtypes {dtypes}")
        # Every parameter enters as a constant: no gradient reaches anything outside theta.
        self.fixed = {f"model.{name}": p.detach() for name, p in params.items()}
        self.slots = []  # (key, flat positions or (start, stop) or None, shape, offset, size)
        pieces, offset = [], 0
        for name, index in component.entries:
            p = params[name].detach()
            if index is None:
                where, size = None, p.numel()
                pieces.append(p.reshape(-1))
            else:
                positions = component.mask(name, p).reshape(-1).nonzero().squeeze(1)
                size = positions.numel()
                start = int(positions[0])
                contiguous = int(positions[-1]) - start + 1 == size  # e.g. one head: a block of W_Q
                where = (start, start + size) if contiguous else positions
                pieces.append(p.reshape(-1)[positions])
            self.slots.append((f"model.{name}", where, p.shape, offset, size))
            offset += size
        self.theta0 = torch.cat(pieces).clone()
        self.n = offset

    def build(self, theta: Tensor) -> dict[str, Tensor]:
        out = dict(self.fixed)
        for key, where, shape, offset, size in self.slots:
            piece = theta[offset:offset + size]
            if where is None:
                out[key] = piece.view(shape)
                continue
            flat = self.fixed[key].reshape(-1)
            if isinstance(where, tuple):
                start, stop = where
                out[key] = torch.cat([flat[:start], piece, flat[stop:]]).view(shape)
            else:
                out[key] = flat.index_put((where,), piece).view(shape)
        return out


class CurvatureOperator:
    """A symmetric operator M = sum_b M_b / sum_b W_b, applied to blocks of vectors.

    Subclasses give the per-batch products M_b V; the estimators also read
    the per-batch quadratic forms v^T M_b v, from which they get the spread
    of an estimate across batches (data noise). Vectors are float64
    [n, k]; `n_products` counts columns passed through the whole operator.
    """

    n: int
    name: str = "operator"
    batch_weights: np.ndarray

    def __init__(self) -> None:
        self.n_products = 0

    @property
    def n_batches(self) -> int:
        return len(self.batch_weights)

    def batch_products(self, b: int, V: Tensor) -> Tensor:
        raise NotImplementedError

    def matvec(self, V: Tensor) -> Tensor:
        out, _ = self.matvec_and_quads(V)
        return out

    def quads(self, V: Tensor) -> Tensor:
        """[n_batches, k]: v_j^T M_b v_j."""
        _, quads = self.matvec_and_quads(V)
        return quads

    def matvec_and_quads(self, V: Tensor) -> tuple[Tensor, Tensor]:
        V = _as_block(V, self.n)
        total = torch.zeros_like(V)
        quads = torch.zeros(self.n_batches, V.shape[1], dtype=torch.float64)
        for b in range(self.n_batches):
            MV = self.batch_products(b, V)
            quads[b] = (V * MV).sum(0)
            total += MV
        self.n_products += V.shape[1]
        return total / float(self.batch_weights.sum()), quads


class HessianOperator(CurvatureOperator):
    """The Hessian of the mean loss over `batches`, restricted to `component`, at the model's weights.

    loss_fn(model, batch) -> scalar; prepare(batch) runs (without gradients)
    before each graph is built, e.g. to attach a teacher's targets, so that
    big targets are never stored. batch_weights W_b (default 1): the operator
    is sum_b H_b / sum_b W_b. cache_graphs: how many batches keep their
    double-backward graph between calls (about 200 MB each for one head of
    the reference model at batch 8, ctx 256); the others rebuild theirs on
    every call. vectorize: push blocks of `block_size` vectors through the
    graph in one vmapped backward (`is_grads_batched`) rather than one by
    one; None picks it for components below VECTORIZE_BELOW coordinates,
    where the per-call overhead dominates (tiny models: 0.4 ms instead of
    16 ms per product; one head of the reference model: 0.5-0.65 s instead
    of 0.17-0.34 s, so not there).
    """

    def __init__(self, model: nn.Module, component: Component, loss_fn: LossFn, batches: Sequence[Any], *,
                 prepare: Callable[[int, Any], Any] | None = None, batch_weights: Sequence[float] | None = None,
                 cache_graphs: int = 4, vectorize: bool | None = None, block_size: int = 64):
        super().__init__()
        if len(batches) == 0:
            raise ValueError("need at least one batch")
        self.component = component
        self.name = component.name
        self.params = ComponentParams(model, component)
        self.n = self.params.n
        self.dtype = self.params.theta0.dtype
        self.device = self.params.theta0.device
        self._loss = _LossModule(model, loss_fn)
        self.batches = list(batches)
        self.prepare = prepare
        weights = np.ones(len(batches)) if batch_weights is None else np.asarray(batch_weights, dtype=float)
        if weights.shape != (len(batches),) or not np.all(weights > 0):
            raise ValueError(f"batch_weights must be {len(batches)} positive numbers")
        self.batch_weights = weights
        self.cache_graphs = cache_graphs
        self.vectorize = self.n < VECTORIZE_BELOW if vectorize is None else vectorize
        self.block_size = block_size
        self._graphs: dict[int, tuple[Tensor, Tensor]] = {}

    def _batch(self, b: int) -> Any:
        batch = self.batches[b]
        if self.prepare is not None:
            with torch.no_grad():
                batch = self.prepare(b, batch)
        return batch

    def _graph(self, b: int) -> tuple[Tensor, Tensor]:
        if b in self._graphs:
            return self._graphs[b]
        batch = self._batch(b)
        theta = self.params.theta0.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = functional_call(self._loss, self.params.build(theta), (batch,))
            (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
        if len(self._graphs) < self.cache_graphs:
            self._graphs[b] = (theta, grad)
        return theta, grad

    def batch_products(self, b: int, V: Tensor) -> Tensor:
        theta, grad = self._graph(b)
        out = torch.zeros_like(V)
        if not grad.requires_grad:  # the loss is at most linear in theta
            return out
        # The estimators keep float64 vectors on the CPU; products run in the model's dtype and device.
        if self.vectorize:
            for start in range(0, V.shape[1], self.block_size):
                block = V[:, start:start + self.block_size].T.to(self.device, self.dtype).contiguous()
                (hv,) = torch.autograd.grad(grad, theta, block, retain_graph=True, allow_unused=True,
                                            is_grads_batched=True)
                if hv is not None:
                    out[:, start:start + block.shape[0]] = hv.T.to("cpu", torch.float64)
            return out
        for j in range(V.shape[1]):
            v = V[:, j].to(self.device, self.dtype)
            (hv,) = torch.autograd.grad(grad, theta, v, retain_graph=True, allow_unused=True)
            if hv is not None:
                out[:, j] = hv.to("cpu", torch.float64)
        return out

    def clear_cache(self) -> None:
        """Free the retained graphs (they are also freed with the operator)."""
        self._graphs.clear()


class DenseOperator(CurvatureOperator):
    """A symmetric matrix as an operator (one batch): for tests and for small components."""

    def __init__(self, matrix: Tensor | np.ndarray, name: str = "dense"):
        super().__init__()
        m = torch.as_tensor(matrix, dtype=torch.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"need a square matrix, got shape {tuple(m.shape)}")
        self.matrix = (m + m.T) / 2
        self.n = m.shape[0]
        self.name = name
        self.batch_weights = np.ones(1)

    def batch_products(self, b: int, V: Tensor) -> Tensor:
        return self.matrix @ V


def _as_block(V: Tensor, n: int) -> Tensor:
    V = V.to("cpu", torch.float64)
    if V.ndim == 1:
        V = V[:, None]
    if V.ndim != 2 or V.shape[0] != n:
        raise ValueError(f"vectors must be [{n}, k], got {tuple(V.shape)}")
    return V


def read_batches(data: Iterable, n_batches: int | None) -> list[Any]:
    """The first `n_batches` batches of `data` (all of a sized iterable by default), checked for NaN/Inf."""
    stream = BatchStream(data)
    if n_batches is None:
        if not hasattr(data, "__len__"):
            raise ValueError("data has no length: pass n_batches=...")
        n_batches = len(data)
    if n_batches < 1:
        raise ValueError(f"n_batches must be at least 1, got {n_batches}")
    batches = [stream.raw(t) for t in range(n_batches)]
    if stream.n_distinct < n_batches:
        raise ValueError(f"data has only {stream.n_distinct} batches, {n_batches} were asked for")
    return batches


def hessian_operator(model: nn.Module, data: Iterable, *, component: ComponentSpec = None,
                     loss_fn: LossFn | None = None, teacher: nn.Module | None = None,
                     n_batches: int | None = None, cache_graphs: int = 4,
                     vectorize: bool | None = None) -> HessianOperator:
    """The Hessian of the (data-refined) loss restricted to a component, at the model's current weights.

    data: iterable of batches; the loss is averaged over the first n_batches.
    loss_fn(model, batch): default next-token cross-entropy, or with `teacher`
        the cross-entropy against the teacher's next-token distribution
        (the same losses as rllc.sampling).
    component: any spec of rllc.models.components ("1:6", "layer:0", None = all).
    """
    check_finite_weights(model)
    comp = resolve_component(model, component)
    prepare = None
    if teacher is not None:
        if loss_fn is not None:
            raise ValueError("pass either teacher or loss_fn, not both")
        targets = TeacherTargets(teacher)
        loss_fn, prepare = teacher_loss, (lambda b, batch: targets(batch))
    elif loss_fn is None:
        loss_fn = next_token_loss
    return HessianOperator(model, comp, loss_fn, read_batches(data, n_batches), prepare=prepare,
                           cache_graphs=cache_graphs, vectorize=vectorize)


def rademacher(n: int, k: int, generator: torch.Generator) -> Tensor:
    """[n, k] of independent +-1 (float64)."""
    return torch.randint(0, 2, (n, k), generator=generator).to(torch.float64).mul_(2).sub_(1)
