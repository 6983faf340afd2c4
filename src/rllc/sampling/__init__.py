"""Projected SGLD and (refined) local learning coefficient estimation."""

from rllc.sampling.calibrate import calibrate, plot_calibration
from rllc.losses import BatchStream, NonFiniteDataError, TeacherTargets, next_token_loss, teacher_loss
from rllc.sampling.diagnostics import ChainDivergedError, ess_bulk, ess_tail, mcse_mean, rhat, trace_summary
from rllc.sampling.kernel import ProjectedSGLD, chain_seed
from rllc.sampling.llc import estimate_llc, estimate_llcs
from rllc.sampling.observables import TokenLossObserver
from rllc.sampling.result import LLCEstimate, estimates_table
from rllc.sampling.settings import SAMPLERS, SGLDSettings
from rllc.sampling.susceptibility import BIF, Susceptibilities, bif, susceptibilities

__all__ = [
    "BIF",
    "BatchStream",
    "ChainDivergedError",
    "LLCEstimate",
    "NonFiniteDataError",
    "ProjectedSGLD",
    "SAMPLERS",
    "SGLDSettings",
    "Susceptibilities",
    "TeacherTargets",
    "TokenLossObserver",
    "bif",
    "calibrate",
    "chain_seed",
    "ess_bulk",
    "ess_tail",
    "mcse_mean",
    "rhat",
    "trace_summary",
    "estimate_llc",
    "estimate_llcs",
    "estimates_table",
    "next_token_loss",
    "plot_calibration",
    "susceptibilities",
    "teacher_loss",
]
