"""Critical points (peaks, troughs, inflections) against planted ones, stage
boundaries of a planted LLC curve, alignment of events across signals.

Tolerances (default smoothing: Gaussian, sigma 0.08 decades of log10(step+offset)):
peaks and troughs within 0.03 decades of the planted step (7% in step),
inflections within 0.07 decades (17%): the smoothing widens a Gaussian bump,
which moves its steepest points outwards by ~0.02 decades, and the early
inflections sit where checkpoints are sparse.
"""

import numpy as np
import pandas as pd
import pytest

from rllc.analysis.compare import stage_boundaries, stages_of
from rllc.analysis.critical import Smoothing, align_events, critical_points, critical_points_table, smooth_curve
from rllc.analysis.synthetic import log_schedule, planted_results
from rllc.analysis.trajectories import AnalysisError

TOL = {"peak": 0.03, "trough": 0.03, "rise": 0.07, "fall": 0.07}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_critical_points_found_within_tolerance(seed):
    df, _, truth = planted_results(seed=seed)  # 28 heads, 2 planted points per head on average
    found = critical_points_table(df, ["llc"])
    assert len(found) == len(truth)  # nothing missed, nothing spurious
    worst = {}
    for t in truth.itertuples():
        cand = found[(found["component"] == t.component) & (found["kind"] == t.kind)]
        assert len(cand) == 1, (t, cand)
        err = abs(float(cand["x"].iloc[0]) - t.x)
        worst[t.kind] = max(worst.get(t.kind, 0.0), err)
        assert err <= TOL[t.kind], (t, cand)
    print(f"seed {seed}: worst error in decades {worst}")
    assert found["smoothing"].str.startswith("gaussian, sigma 0.08 decades").all()


def test_noise_alone_has_no_critical_points():
    rng = np.random.default_rng(0)
    steps = log_schedule(40)
    for _ in range(20):
        assert critical_points(steps, 5 + rng.normal(0, 1, len(steps))).empty


def test_savgol_smoothing_and_stated_description():
    steps = np.array(log_schedule(60))
    x = np.log10(steps + 100)
    y = 10 * np.exp(-0.5 * ((x - 3.5) / 0.15) ** 2)
    pts = critical_points(steps, y, smoothing=Smoothing("savgol", 0.25, 3))
    peak = pts[pts["kind"] == "peak"]
    assert len(peak) == 1 and abs(peak["x"].iloc[0] - 3.5) < 0.01
    assert pts["smoothing"].iloc[0] == ("savitzky-golay, window 0.25 decades, order 3, 256-point grid in "
                                        "log10(step + 100)")
    with pytest.raises(AnalysisError):
        Smoothing("spline")
    c = smooth_curve(steps, y, Smoothing("none"))
    assert np.allclose(np.interp(x, c.x, c.y), y, atol=0.15)


def test_stage_boundaries_of_a_planted_llc_curve():
    """Two sigmoid rises (at 300 and 8000 steps) with a plateau between them,
    then a bump at 25000: boundaries at the plateau (the midpoint in log-step,
    by symmetry) and at the bump's peak, each within 0.05 decades."""
    steps = np.array(log_schedule(60))
    x = np.log10(steps + 100)
    xa, xb, xc = np.log10(400), np.log10(8100), np.log10(25100)
    llc = (50 / (1 + np.exp(-(x - xa) / 0.08)) + 50 / (1 + np.exp(-(x - xb) / 0.08))
           + 20 * np.exp(-0.5 * ((x - xc) / 0.05) ** 2))
    llc = llc + np.random.default_rng(0).normal(0, 0.3, len(x))
    stages = stage_boundaries(steps, llc)
    bounds = stages[stages["boundary"] != ""]
    assert list(bounds["boundary"]) == ["plateau", "peak"]
    assert abs(np.log10(bounds["end"].iloc[0] + 100) - (xa + xb) / 2) < 0.05
    assert abs(np.log10(bounds["end"].iloc[1] + 100) - xc) < 0.05
    assert list(stages["stage"]) == ["S1", "S2", "S3"]
    assert stages["start"].iloc[0] == 0 and stages["end"].iloc[-1] == pytest.approx(steps[-1])
    # from a results table: the model-level llc curve
    table = pd.DataFrame(dict(step=steps, kind="estimate", signal="llc", component="model", dataset="prose",
                              value=llc))
    assert stages_of(table)[["stage", "boundary"]].equals(stages[["stage", "boundary"]])


def test_alignment_of_a_peak_with_a_drop():
    """Each head's drLLC peak against the drop of its own score, or of the
    model's ICL score when the score has no curve for that head."""
    steps = np.array(log_schedule(50))
    x = np.log10(steps + 100)
    rows = []
    lags = {"1:6": 0.1, "1:7": -0.05}
    for head, lag in lags.items():
        llc = 5 + 30 * np.exp(-0.5 * ((x - 3.8) / 0.1) ** 2)
        rows += [dict(step=s, signal="llc", component=head, dataset="code", value=v) for s, v in zip(steps, llc)]
        score = 1 - 0.8 / (1 + np.exp(-(x - 3.8 - lag) / 0.05))
        rows += [dict(step=s, signal="icl_score", component=head, dataset="rr", value=v)
                 for s, v in zip(steps, score)]
    icl = -0.2 - 1 / (1 + np.exp(-(x - 3.7) / 0.05))
    rows += [dict(step=s, signal="icl", component="model", dataset="rr", value=v) for s, v in zip(steps, icl)]
    rows += [dict(step=s, signal="llc", component="0:1", dataset="code", value=v)
             for s, v in zip(steps, 5 + 30 * np.exp(-0.5 * ((x - 3.0) / 0.1) ** 2))]
    points = critical_points_table(pd.DataFrame(rows), ["llc", "icl_score", "icl"])
    own = align_events(points, ("llc", "peak"), ("icl_score", "fall")).set_index("component")
    for head, lag in lags.items():
        assert own.loc[head, "lag_decades"] == pytest.approx(lag, abs=0.02)
        assert own.loc[head, "other_component"] == head
    assert np.isnan(own.loc["0:1", "lag_decades"])  # no score curve for 0:1 and no model fallback for icl_score
    model = align_events(points, ("llc", "peak"), ("icl", "fall"), max_lag=0.5).set_index("component")
    assert model.loc["1:6", "lag_decades"] == pytest.approx(-0.1, abs=0.02)
    assert model.loc["1:6", "other_component"] == "model"
    assert np.isnan(model.loc["0:1", "lag_decades"])  # 0.7 decades away: beyond max_lag
