"""Projected SGLD and (refined) local learning coefficient estimation."""

from rllc.sampling.calibrate import calibrate, plot_calibration
from rllc.sampling.data import BatchStream, NonFiniteDataError, TeacherTargets, next_token_loss, teacher_loss
from rllc.sampling.diagnostics import ChainDivergedError, ess_bulk, ess_tail, mcse_mean, rhat, trace_summary
from rllc.sampling.kernel import ProjectedSGLD, chain_seed
from rllc.sampling.llc import estimate_llc, estimate_llcs
from rllc.sampling.result import LLCEstimate, estimates_table
from rllc.sampling.settings import SAMPLERS, SGLDSettings

__all__ = [
    "BatchStream",
    "ChainDivergedError",
    "LLCEstimate",
    "NonFiniteDataError",
    "ProjectedSGLD",
    "SAMPLERS",
    "SGLDSettings",
    "TeacherTargets",
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
    "teacher_loss",
]
