"""Deprecated: the synthetic results tables are `rllc.analysis.synthetic` (they are not the demo's data); this
old path forwards there with a DeprecationWarning for one release."""

from rllc.deprecation import forward

__getattr__ = forward("rllc.analysis.demo_data", "rllc.analysis.synthetic")
