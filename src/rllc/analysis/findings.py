"""Deprecated: the study's findings are `rllc.study.findings`; this old path forwards there with a
DeprecationWarning for one release (by name, at first use: the analysis layer never imports the study)."""

from rllc.deprecation import forward

__getattr__ = forward("rllc.analysis.findings", "rllc.study.findings")
