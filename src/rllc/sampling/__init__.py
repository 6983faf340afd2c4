"""Projected SGLD and (refined) local learning coefficient estimation."""

from rllc.sampling.calibrate import calibrate, plot_calibration
from rllc.sampling.data import BatchStream, NonFiniteDataError, TeacherTargets, next_token_loss, teacher_loss
from rllc.sampling.diagnostics import ChainDivergedError, ess_bulk, ess_tail, mcse_mean, rhat, trace_summary
from rllc.sampling.kernel import ProjectedSGLD, chain_seed
from rllc.sampling.llc import LLCEstimate, estimate_llc

__all__ = [
    "BatchStream",
    "ChainDivergedError",
    "LLCEstimate",
    "NonFiniteDataError",
    "ProjectedSGLD",
    "TeacherTargets",
    "calibrate",
    "chain_seed",
    "ess_bulk",
    "ess_tail",
    "mcse_mean",
    "rhat",
    "trace_summary",
    "estimate_llc",
    "next_token_loss",
    "plot_calibration",
    "teacher_loss",
]
