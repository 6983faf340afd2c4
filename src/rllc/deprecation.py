"""Old import paths, kept for one release: they forward to the one public path and warn.

    # in the old module:
    __getattr__ = forward("rllc.cluster", "rllc.analysis")

Each name taken from the old module raises a DeprecationWarning naming the new path, then returns the
object itself (the same class or function, so isinstance checks and identity hold). The list of old paths
is in docs/design.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any


def forward(old: str, new: str, names: Iterable[str] | None = None) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` (PEP 562) for module `old` that hands out `new`'s attributes (all of
    them, or only `names`) with a DeprecationWarning."""
    allowed = None if names is None else set(names)

    def __getattr__(name: str) -> Any:
        if name.startswith("__") or (allowed is not None and name not in allowed):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        module = importlib.import_module(new)
        if not hasattr(module, name):
            raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {new!r}, which has none)")
        warnings.warn(f"{old}.{name} is deprecated and will be removed in the next release; use {new}.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(module, name)

    return __getattr__


class DeprecatedFlag(argparse.Action):
    """An old command-line flag kept for one release beside its new name: it prints one warning line to stderr
    (`rllc cluster: warning: --normalise is deprecated ...; use --normalisation`, as argparse of Python 3.13
    does for deprecated options) and stores into the new flag's dest: `const` for a flag without a value
    (nargs=0), else the value (appended, with append=True, for a repeatable flag). Register it with
    help=argparse.SUPPRESS so that --help shows the new name only."""

    def __init__(self, option_strings, dest, *, new: str, nargs=None, const=None, append: bool = False, **kwargs):
        self.new, self.append = new, append
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated and will be removed in the next release; use "
              f"{self.new}", file=sys.stderr)
        if self.append:
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
