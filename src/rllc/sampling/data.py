"""The reference loss of the SGLD estimators: L_{B_t}(w*) over the draws' own batches (rllc.sampling.llc).

The minibatch stream and the losses live in `rllc.losses`, shared with rllc.curvature.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rllc.losses import BatchStream, LossFn


@torch.no_grad()
def reference_losses(model: nn.Module, loss_fn: LossFn, stream: BatchStream, steps: int) -> np.ndarray:
    """L_{B_t}(w*) for t = 0..steps-1: one forward pass per distinct batch, repeated as the stream cycles."""
    by_batch: dict[int, float] = {}
    out = np.empty(steps)
    for t in range(steps):
        i = stream.index(t)
        if i not in by_batch:
            value = float(loss_fn(model, stream[t]))
            if not math.isfinite(value):
                raise ValueError(f"the loss at w* on batch {i} is {value} although data and weights are finite; "
                                 "check loss_fn")
            by_batch[i] = value
        out[t] = by_batch[i]
    return out
