"""Deprecated: comparison is `rllc.analysis` (`from rllc.analysis import compare`); this old path
forwards there with a DeprecationWarning for one release. See docs/analysis.md."""

from rllc.deprecation import forward

__getattr__ = forward("rllc.compare", "rllc.analysis")
