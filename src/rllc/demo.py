"""Deprecated: the demo study's pipeline is `rllc.study.demo`; this old path forwards there with a
DeprecationWarning for one release."""

from rllc.deprecation import forward

__getattr__ = forward("rllc.demo", "rllc.study.demo")
