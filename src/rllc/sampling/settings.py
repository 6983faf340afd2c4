"""SGLD settings, declared once.

Every setting of the LLC samplers is one field of :class:`SGLDSettings`, with
its default, its range check and its help text. Everything else is derived
from the fields: the keyword arguments of ``rllc.estimate_llc`` /
``rllc.estimate_llcs``, the ``rllc estimate`` options and TOML keys
(``rllc.runs.options``, ``rllc.cli``), the part of a series row's
``config_hash`` that the sampler contributes, and the hyperparameter columns
of the rows. Adding a setting is adding a field here (and using it in
``rllc.sampling.update``).

Hash stability: a field marked ``hash="if_changed"`` enters a run's
``config_hash`` only when it differs from its default, so adding a setting
does not change the hash of results computed before it existed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

SAMPLERS = ("sgld", "rmsprop")


def _positive(x) -> bool:
    return x > 0


def _non_negative(x) -> bool:
    return x >= 0


def setting(default: Any, help: str, check: Callable[[Any], bool] | None = None, rule: str = "",
            *, hash: str = "always", kind: type | tuple[type, ...] | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A settings field: default, help text, range check (with the rule in words), hashing policy."""
    kind = kind or type(default)
    if choices is not None:
        check, rule = (lambda x: x in choices), f"one of {', '.join(choices)}"
    return dataclasses.field(default=default, metadata=dict(help=help, check=check, rule=rule, hash=hash,
                                                            kind=kind, choices=choices))


def _type_word(kinds: tuple[type, ...], rule: str) -> str:
    if kinds == (bool,):
        return "true or false"
    if float in kinds:
        return "a number or none" if type(None) in kinds else "a number"
    return rule or kinds[0].__name__


@dataclass(frozen=True)
class SGLDSettings:
    """The settings of one LLC estimate (both back-ends, every sampler).

    Defaults: the rLLC paper's settings (docs/llc.md, "Hyperparameters"). Invalid values raise
    ValueError naming the setting and its rule.
    """

    sampler: str = setting("sgld", "the sampler: sgld (plain SGLD) or rmsprop (RMSProp-preconditioned SGLD, "
                                   "Li et al. 2016; devinterp's rmsprop_sgld)",
                           choices=SAMPLERS, hash="if_changed")
    epsilon: float = setting(1e-3, "step size", _positive, "positive", kind=(int, float))
    nbeta: float = setting(30.0, "n * beta, the inverse temperature", _positive, "positive", kind=(int, float))
    gamma: float = setting(200.0, "localization strength", _non_negative, "non-negative", kind=(int, float))
    chains: int = setting(4, "chains per component", _positive, "a positive integer")
    draws: int = setting(200, "draws per chain", _positive, "a positive integer")
    burn_in: int = setting(0, "discarded steps per chain", _non_negative, "a non-negative integer")
    paired: bool = setting(True, "report the paired estimator nbeta * mean(L_B(w_t) - L_B(w*)) (default); "
                                 "--no-paired: the standard one. Both take L(w*) over the draws' own batches, "
                                 "so their means agree; the paired one's standard error leaves out batch-to-batch "
                                 "loss variation that cancels")
    weight_decay: float = setting(0.0, "weight decay of the sampler's prior (pull towards 0)", _non_negative,
                                  "non-negative", hash="if_changed", kind=(int, float))
    bounding_box: float | None = setting(None, "clamp every coordinate to w* +- this (none: no box)",
                                         lambda x: x is None or x > 0, "positive or none", hash="if_changed",
                                         kind=(int, float, type(None)))
    rmsprop_alpha: float = setting(0.99, "rmsprop: decay of the running mean of squared gradients",
                                   lambda x: 0 <= x < 1, "in [0, 1)", hash="if_changed", kind=(int, float))
    rmsprop_eps: float = setting(0.1, "rmsprop: stability constant of the preconditioner 1 / (eps + sqrt(V))",
                                 _positive, "positive", hash="if_changed", kind=(int, float))
    noise_level: float = setting(1.0, "standard deviation of the injected noise (1: SGLD; other values temper the "
                                      "chains and void the posterior guarantee; devinterp's noise_level)",
                                 _positive, "positive", hash="if_changed", kind=(int, float))
    antithetic: bool = setting(False, "pair the chains (0, 1), (2, 3), ...: the odd chain's injected noise is the "
                                      "negative of the even chain's (antithetic variates). Each chain is still an "
                                      "exact SGLD chain, so the estimate is unbiased; in a pair's mean the loss "
                                      "terms of first order in the noise cancel. Standard error, R-hat and ESS are "
                                      "computed over pair means. Needs an even number of chains",
                               hash="if_changed")
    max_loss_increase: float | None = setting(None, "a draw whose loss exceeds L(w*) by more than this stops "
                                                    "the estimate as diverged (none: 10 * max(1, |L(w*)|))",
                                              lambda x: x is None or x > 0, "positive or none", hash="if_changed",
                                              kind=(int, float, type(None)))

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            kinds = meta["kind"] if isinstance(meta["kind"], tuple) else (meta["kind"],)
            if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
                raise ValueError(f"{f.name} must be {_type_word(kinds, meta['rule'])}, got {value!r} "
                                 f"({type(value).__name__})")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite, got {value!r}")
            if meta["check"] is not None and not meta["check"](value):
                raise ValueError(f"{f.name} must be {meta['rule']}, got {value!r}")
            if float in kinds and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))  # one canonical type for hashing
        if self.antithetic and self.chains % 2:
            raise ValueError(f"antithetic pairs the chains: chains must be even, got {self.chains}")

    # --- derived views -----------------------------------------------------------------------

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def describe(cls) -> list[dataclasses.Field]:
        """The fields with their metadata (help, rule, kind): what the CLI and docs are built from."""
        return list(dataclasses.fields(cls))

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "SGLDSettings":
        """The settings among a dict of options (other keys ignored); None means the default."""
        return cls(**{k: options[k] for k in cls.names() if k in options and options[k] is not None})

    def replace(self, **changes: Any) -> "SGLDSettings":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.names()}

    def hashed(self) -> dict[str, Any]:
        """The settings that key a result: every 'always' field, and each 'if_changed' one off its default."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["hash"] == "always" or value != f.default:
                out[f.name] = value
        return out

    def max_loss(self, init_loss: float) -> float:
        """The divergence threshold on a draw's loss."""
        increase = 10.0 * max(1.0, abs(init_loss)) if self.max_loss_increase is None else self.max_loss_increase
        return init_loss + increase


def split_settings(kwargs: dict[str, Any], settings: SGLDSettings | None = None) -> SGLDSettings:
    """Settings from keyword arguments (the Python API's way to give them), on top of `settings`.

    Unknown keywords are an error that lists the valid ones.
    """
    unknown = [k for k in kwargs if k not in SGLDSettings.names()]
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; SGLD settings are "
                        f"{', '.join(SGLDSettings.names())}")
    base = settings if settings is not None else SGLDSettings()
    return base.replace(**kwargs) if kwargs else base
