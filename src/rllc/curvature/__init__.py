"""Curvature baselines: Hessian trace, FIM trace, extreme eigenvalues and Hessian rank.

Every estimator works on the loss as a function of one component's
coordinates only (a head, a layer, the whole model: the component specs of
`rllc.models.components`, as for the rLLC), averaged over the given batches
(data refinement), at the model's current weights. Results are
:class:`CurvatureEstimate` rows. See docs/curvature.md.

How Hessian-vector products are computed, and why. The restricted loss is a
function of a flat vector theta (`torch.func.functional_call` swaps the
component's coordinates into otherwise constant parameters). Measured on one
head of the reference model (2 layers, d_model 256, 8 heads, d_head 32,
ctx 256, vocab 5000, batch 8; 32,864 coordinates) on the 2 shared CPU cores:

====================================================  ==============
forward pass                                          0.08-0.09 s
gradient (forward + backward)                         0.18 s
double backward, fresh graph per product              0.33-0.36 s
``jvp(grad(f))`` (forward-over-reverse)               0.55 s
``vmap(jvp(grad(f)))``, per vector (4 / 8 vectors)    0.38-0.44 / 1.0 s
double backward on a retained graph, per product      0.17-0.22 s
the same, ``is_grads_batched`` blocks of 8-16         0.44-0.65 s per vector
====================================================  ==============

While other jobs loaded the machine, everything took 2-7x longer, and two
contending threads hurt the one-by-one products most (1.3 s against 0.6 s
per vector in vmapped blocks); with one thread the one-by-one products were
faster again (0.34 s against 0.54 s).

Forward mode is slow on CPU here (the logits' tangent alone took 1.1 s), and
vmapping probes saves nothing for a head of this size (it does for tiny
models: see `HessianOperator`'s `vectorize`). So each batch's forward pass and first
backward (create_graph=True) are built once and kept (`cache_graphs`), and
each product is one backward through that graph: half the cost of a fresh
double backward. curvlinops restricts only to whole parameters and PyHessian
does not install on current torch (docs/curvature.md), so neither is used.
"""

from rllc.curvature.fisher import FisherContexts, fim_trace, fisher_operator, sample_contexts, sequence_log_prob
from rllc.curvature.operator import (
    ComponentParams,
    CurvatureOperator,
    DenseOperator,
    HessianOperator,
    hessian_operator,
    rademacher,
)
from rllc.curvature.rank import (
    SpectrumRangeWarning,
    chebyshev_moments,
    chebyshev_rank,
    hessian_rank,
    jackson_coefficients,
    step_coefficients,
)
from rllc.curvature.results import CurvatureEstimate
from rllc.curvature.spectrum import (
    LanczosResult,
    SpectralDensity,
    extreme_eigenvalues,
    hessian_eigenvalues,
    lanczos,
    slq_rank,
    spectral_density,
)
from rllc.curvature.trace import estimate_trace, hessian_trace, hutch_plus_plus, hutchinson

__all__ = [
    "ComponentParams",
    "CurvatureEstimate",
    "CurvatureOperator",
    "DenseOperator",
    "FisherContexts",
    "HessianOperator",
    "LanczosResult",
    "SpectralDensity",
    "SpectrumRangeWarning",
    "chebyshev_moments",
    "chebyshev_rank",
    "estimate_trace",
    "extreme_eigenvalues",
    "fim_trace",
    "fisher_operator",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_rank",
    "hessian_trace",
    "hutch_plus_plus",
    "hutchinson",
    "jackson_coefficients",
    "lanczos",
    "rademacher",
    "sample_contexts",
    "sequence_log_prob",
    "slq_rank",
    "spectral_density",
    "step_coefficients",
]
