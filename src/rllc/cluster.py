"""Deprecated: clustering is `rllc.analysis` (`from rllc.analysis import cluster_trajectories`); this old
path forwards there with a DeprecationWarning for one release. See docs/analysis.md."""

from rllc.deprecation import forward

__getattr__ = forward("rllc.cluster", "rllc.analysis")
