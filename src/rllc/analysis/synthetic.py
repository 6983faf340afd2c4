"""Synthetic results tables, in the format of `rllc.load_results`, for tests
and for the example report. Nothing here is measured: every curve is a formula
with planted groups, critical points and stages, plus seeded noise.

* `planted_results`: groups of heads whose curves differ in shape, scale and
  critical points, with the planted truth (groups and critical points);
* `demo_results` / `demo_config`: a realistic-looking run of a 2-layer,
  8-head attention-only model on the rLLC paper's checkpoint schedule, with
  every kind of signal the analysis reads (drLLC on prose and code, curvature,
  head scores, PR, ablations, ICL, composition, head classes) and two
  deliberately unhealthy estimates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from rllc.results import COLUMNS  # the store's columns, declared once
OFFSET = 100.0  # log-time axis of the planted curves: x = log10(step + 100)


def _x(step) -> np.ndarray:
    return np.log10(np.asarray(step, dtype=float) + OFFSET)


def _sig(x, centre, width):
    return 1.0 / (1.0 + np.exp(-(x - centre) / width))


def _bump(x, centre, width):
    return np.exp(-0.5 * ((x - centre) / width) ** 2)


def paper_schedule() -> list[int]:
    """The rLLC paper's 107 checkpoints: 0, 100, every 200 to 10k, every 400 to 20k, every 1000 to 50k."""
    steps = [0, 100, *range(200, 10_001, 200), *range(10_400, 20_001, 400), *range(21_000, 50_001, 1000)]
    return sorted(set(steps))


def log_schedule(n: int = 40, last: int = 50_000) -> list[int]:
    """0 and n−1 steps evenly spaced in log from 100 to `last` (rounded)."""
    return sorted({0, *np.round(np.geomspace(100, last, n - 1)).astype(int).tolist()})


def _row(step, kind, signal, component, dataset, value, se=np.nan, diagnostics=None, config_hash="synthetic"):
    return dict(step=int(step), checkpoint=f"step_{int(step):06d}", kind=kind, signal=signal, component=component,
                dataset=dataset, value=float(value), se=float(se), config_hash=config_hash,
                seconds=0.0, diagnostics=json.dumps(diagnostics or {}))


# --- planted groups ---------------------------------------------------------------

# Each group: a shape over x = log10(step+100), its amplitude, and its critical points.
#   early-peak : a Gaussian bump (sigma 0.15 decades) at ~800 steps
#   late-rise  : a sigmoid (width 0.08 decades) with its inflection at ~7000
#   early-fall : a falling sigmoid (width 0.1) with its inflection at ~300
#   late-trough: a constant minus a Gaussian dip (sigma 0.15) at ~15000
PLANTED_GROUPS = (
    dict(name="early-peak", centre=800, width=0.15, amplitude=40.0, base=5.0),
    dict(name="late-rise", centre=7000, width=0.08, amplitude=120.0, base=10.0),
    dict(name="early-fall", centre=300, width=0.10, amplitude=15.0, base=3.0),
    dict(name="late-trough", centre=15000, width=0.15, amplitude=60.0, base=80.0),
)


def _planted_curve(name, x, xc, width, amp, base):
    if name == "early-peak":
        return base + amp * _bump(x, xc, width)
    if name == "late-rise":
        return base + amp * _sig(x, xc, width)
    if name == "early-fall":
        return base + amp * (1 - _sig(x, xc, width))
    if name == "late-trough":
        return base - amp * _bump(x, xc, width)
    raise ValueError(name)


def _planted_points(name, xc, width) -> list[tuple[str, float]]:
    """(kind, x) of the planted curve's critical points (a Gaussian bump of
    width s has its steepest slopes at xc ± s; a sigmoid at xc)."""
    if name == "early-peak":
        return [("peak", xc), ("rise", xc - width), ("fall", xc + width)]
    if name == "late-rise":
        return [("rise", xc)]
    if name == "early-fall":
        return [("fall", xc)]
    return [("trough", xc), ("fall", xc - width), ("rise", xc + width)]


def planted_results(
    n_per_group: int = 7,
    steps: Sequence[int] | None = None,
    *,
    noise: float = 0.03,
    jitter: float = 0.03,
    amplitude_spread: float = 0.25,
    n_layers: int = 4,
    datasets: Sequence[str] = ("prose",),
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """Per-head "llc" curves in 4 planted groups (`PLANTED_GROUPS`).

    Each head's critical point is moved by N(0, `jitter`) decades, its
    amplitude scaled by U(1−s, 1+s) with s = `amplitude_spread`, and Gaussian
    noise of `noise` × amplitude added at each checkpoint. Heads are spread
    over `n_layers` layers in a random order (so layers do not give the groups
    away). With a second dataset the curves are the same shapes with their
    own noise and a dataset-specific scale.

    Returns (results table, true group of each head, planted critical points
    with columns component, kind, step, x)."""
    rng = np.random.default_rng(seed)
    steps = log_schedule(40) if steps is None else list(steps)
    x = _x(steps)
    n = n_per_group * len(PLANTED_GROUPS)
    per_layer = -(-n // n_layers)
    heads = [f"{i // per_layer}:{i % per_layer}" for i in range(n)]
    order = rng.permutation(n)
    rows, truth, points = [], {}, []
    for slot, g in zip(order, np.repeat(np.arange(len(PLANTED_GROUPS)), n_per_group)):
        spec = PLANTED_GROUPS[g]
        head = heads[slot]
        xc = float(_x(spec["centre"]) + rng.normal(0, jitter))
        amp = spec["amplitude"] * rng.uniform(1 - amplitude_spread, 1 + amplitude_spread)
        truth[head] = spec["name"]
        points += [dict(component=head, kind=k, x=px, step=10 ** px - OFFSET)
                   for k, px in _planted_points(spec["name"], xc, spec["width"])]
        for d_i, dataset in enumerate(datasets):
            scale = 1.0 + 0.5 * d_i
            clean = scale * _planted_curve(spec["name"], x, xc, spec["width"], amp, spec["base"])
            values = clean + rng.normal(0, noise * scale * amp, size=len(x))
            rows += [_row(s, "estimate", "llc", head, dataset, v, noise * scale * amp) for s, v in zip(steps, values)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    groups = pd.Series(truth, name="group").reindex(heads)
    return table, groups, pd.DataFrame(points, columns=["component", "kind", "step", "x"])


# --- a realistic demo run ---------------------------------------------------------------

DEMO_TYPES = {
    "0:1": "previous", "0:4": "previous", "1:6": "induction", "1:7": "induction", "0:5": "self",
    "1:0": "first", "1:1": "first",
}
# Where the demo's full-model LLC is built to be critical (steps; a plateau, a peak,
# a trough, a plateau), near the ends of the paper's stages LM1-LM4 (900, 6.5k, 8.5k, 17.5k).
DEMO_STAGE_STEPS = (960, 6000, 9000, 20000)


def demo_config() -> dict:
    """The configuration the demo run pretends to have been run with."""
    return {
        "name": "demo (synthetic)",
        "checkpoints": "checkpoints/demo",
        "model": {"n_layers": 2, "n_heads": 8, "d_model": 256, "d_head": 32, "n_ctx": 256, "attn_only": True},
        "steps": "paper schedule: 0, 100, every 200 to 10k, every 400 to 20k, every 1000 to 50k (107)",
        "estimators": {"llc": {"epsilon": 1e-3, "nbeta": 30, "gamma": 200, "chains": 4, "draws": 200},
                       "hessian-trace": {"probes": 16}, "fim-trace": {"probes": 16},
                       "hessian-rank": {"degree": 80, "probes": 16}},
        "datasets": ["prose", "code"],
        "probes": ["head_scores", "participation_ratio", "ablation", "icl", "composition", "head_class"],
        "note": "synthetic data made by rllc.analysis.synthetic; no model was run",
    }


def demo_results(steps: Sequence[int] | None = None, seed: int = 0) -> pd.DataFrame:
    """A synthetic results table of a 2-layer, 8-head run (module docstring).

    Planted: previous-token heads 0:1, 0:4 form near step 700; induction heads
    1:6, 1:7 near 7000 (their drLLC peaks there, higher on code; the model's ICL
    score drops; K-composition 0:1/0:4 → 1:6/1:7 rises); current-token head 0:5
    early; the full-model LLC has critical points near `DEMO_STAGE_STEPS`. The
    estimate of head 1:3 at step 3000 has r_hat 1.35 and a warning; head 0:2
    at step 20000 has a chain that returned NaN."""
    rng = np.random.default_rng(seed)
    steps = paper_schedule() if steps is None else sorted(set(int(s) for s in steps))
    x = _x(steps)
    heads = [f"{layer}:{h}" for layer in range(2) for h in range(8)]
    rows: list[dict] = []

    def noisy(curve, rel=0.03):
        curve = np.broadcast_to(np.asarray(curve, dtype=float), x.shape)
        scale = max(float(np.max(np.abs(curve))), 1e-9)
        return curve + rng.normal(0, rel * scale, size=len(curve))

    # full-model LLC: plateau after ~900, rise, dip at the induction bump, rise, saturation
    model_llc = (60 * _sig(x, _x(300), 0.07) + 50 * _sig(x, _x(2700), 0.06) + 14 * _bump(x, _x(6000), 0.045)
                 - 14 * _bump(x, _x(9000), 0.045) + 35 * _sig(x, _x(10000), 0.045) + 30 * _sig(x, _x(40000), 0.045))
    llc_curves: dict[tuple[str, str], np.ndarray] = {}
    for head in heads:
        layer = int(head[0])
        kind = DEMO_TYPES.get(head, "other")
        a = rng.uniform(0.85, 1.15)
        if kind == "previous":
            prose = a * (4 + 30 * _sig(x, _x(650), 0.05) + 12 * _bump(x, _x(1000), 0.08))
            code = 1.4 * prose
        elif kind == "induction":
            prose = a * (6 + 45 * _sig(x, _x(7000), 0.04) + 25 * _bump(x, _x(8000), 0.06))
            code = a * (8 + 80 * _sig(x, _x(6800), 0.04) + 45 * _bump(x, _x(7800), 0.06))
        elif kind == "self":
            prose = a * (5 + 18 * _sig(x, _x(300), 0.06))
            code = 0.9 * prose
        elif kind == "first":
            prose = a * (3 + 10 * _sig(x, _x(15000), 0.08))
            code = a * (3 + 16 * _sig(x, _x(15000), 0.08))
        else:
            late = 1.0 if layer == 1 else 0.4
            prose = a * (4 + 8 * (x - x[0]) / (x[-1] - x[0]) + late * 6 * _sig(x, _x(20000), 0.1))
            code = 0.8 * prose
        llc_curves[(head, "prose")], llc_curves[(head, "code")] = prose, code

    def estimate_rows(signal, component, dataset, curve, rel=0.03, chains=4):
        values = noisy(curve, rel)
        for s, v in zip(steps, values):
            per_chain = (v + rng.normal(0, rel * max(abs(v), 1) * 2, size=chains)).tolist()
            diag = {"rhat": float(1.0 + abs(rng.normal(0, 0.01))), "ess": float(rng.uniform(150, 400)),
                    "per_chain": per_chain, "warnings": []}
            if signal == "llc" and component == "1:3" and dataset == "prose" and s == 3000:
                diag.update(rhat=1.35, ess=18.0, warnings=["chains disagree: r_hat 1.35 > 1.1"])
            if signal == "llc" and component == "0:2" and dataset == "code" and s == 20000:
                diag["per_chain"][2] = float("nan")
                diag["warnings"] = ["chain 2 returned NaN"]
            se = float(np.nanstd(per_chain, ddof=1) / np.sqrt(chains))
            rows.append(_row(s, "estimate", signal, component, dataset, v, se, diag, "est-3f2a"))

    estimate_rows("llc", "model", "prose", model_llc, rel=0.01)
    for (head, dataset), curve in llc_curves.items():
        estimate_rows("llc", head, dataset, curve)
    for head in heads:
        prose = llc_curves[(head, "prose")]
        estimate_rows("hessian-trace", head, "prose", 40 * prose ** 1.1, rel=0.05)
        estimate_rows("fim-trace", head, "prose", 25 * prose, rel=0.05)
        estimate_rows("hessian-rank", head, "prose", np.round(60 + 8 * prose), rel=0.02)

    def probe(signal, component, dataset, curve, rel=0.02, **extras):
        for s, v in zip(steps, noisy(curve, rel)):
            rows.append(_row(s, "probe", signal, component, dataset, v, np.nan, extras, "probe-9c41"))

    icl_model = -0.15 - 1.05 * _sig(x, _x(7000), 0.04)
    probe("icl", "model", "repeated_random", icl_model, rel=0.01)
    for head in heads:
        kind = DEMO_TYPES.get(head, "other")
        prev = 0.05 + (0.85 * _sig(x, _x(700), 0.05) if kind == "previous" else 0.0)
        ind = 0.03 + (0.8 * _sig(x, _x(7000), 0.04) if kind == "induction" else 0.0)
        cur = 0.06 + (0.55 * _sig(x, _x(300), 0.06) if kind == "self" else 0.0)
        probe("previous_token", head, "random_tokens", prev)
        probe("current_token", head, "random_tokens", cur)
        probe("induction", head, "repeated_random", ind)
        pr = 28 - 6 * (x - x[0]) / (x[-1] - x[0])
        if kind == "previous":
            pr = pr - 24 * _sig(x, _x(700), 0.05)
        if kind == "induction":
            pr = pr - 20 * _sig(x, _x(7000), 0.05)
        probe("participation_ratio", head, "repeated_random", pr)
        effect = 0.02 + (0.6 * _sig(x, _x(700), 0.05) if kind == "previous" else 0.0) \
            + (0.9 * _sig(x, _x(7000), 0.04) if kind == "induction" else 0.0)
        for method, factor in (("zero", 1.0), ("mean", 0.7)):
            probe("ablation", head, "repeated_random", factor * effect, method=method)
        icl_abl = icl_model + (1.05 * _sig(x, _x(7000), 0.04) * 0.45 if kind in ("induction", "previous") else 0.0)
        probe("icl_ablated", head, "repeated_random", icl_abl, rel=0.01, method="zero")
    for sender in heads[:8]:
        for receiver in heads[8:]:
            for side in ("q", "k", "v"):
                base = 0.062 + 0.01 * rng.random()
                strong = (side == "k" and DEMO_TYPES.get(sender) == "previous"
                          and DEMO_TYPES.get(receiver) == "induction")
                curve = base + (0.3 * _sig(x, _x(6800), 0.04) if strong else 0.0) + np.zeros_like(x)
                probe("composition", f"{sender}->{receiver}", "weights", curve, rel=0.02, side=side,
                      baseline=0.062, baseline_std=0.002)
    labels_at = {"previous": 700, "induction": 7000, "self": 300, "first": 15000}
    for head in heads:
        kind = DEMO_TYPES.get(head)
        for s in steps:
            label = kind if kind and s >= labels_at[kind] else "unclassified"
            value = 50.0 if label != "unclassified" else 1.5
            rows.append(_row(s, "probe", "head_class", head, "repeated_random", value, np.nan, {"label": label},
                             "probe-9c41"))
    return pd.DataFrame(rows, columns=COLUMNS)
