"""From the long results table to per-head curves: signal keys, pivoting, normalisation, log time, head types."""

import json

import numpy as np
import pandas as pd
import pytest

from rllc.analysis.trajectories import (
    AnalysisError,
    annotate,
    head_types,
    log_resample,
    normalise,
    resolve_key,
    signal_keys,
    stack_trajectories,
    trajectories,
)


def rows(signal, component, values, steps=(0, 100, 200, 400), dataset="prose", kind="estimate", **diag):
    return [dict(step=s, checkpoint=f"step_{s}", kind=kind, signal=signal, component=component, dataset=dataset,
                 value=v, se=np.nan, config_hash="h1", seconds=0.0, diagnostics=json.dumps(diag))
            for s, v in zip(steps, values)]


def test_keys_variants_from_diagnostics_and_store_column():
    df = pd.DataFrame(
        rows("llc", "0:0", [1, 2, 3, 4]) + rows("llc", "0:0", [2, 3, 4, 5], dataset="code")
        + rows("ablation", "0:0", [0.1, 0.2, 0.3, 0.4], kind="probe", dataset="rr", method="zero")
        + rows("ablation", "0:0", [0.0, 0.1, 0.2, 0.3], kind="probe", dataset="rr", method="mean")
        + rows("icl", "model", [-1, -2, -3, -4], kind="probe", dataset="rr"))
    keys = signal_keys(df)
    assert set(keys["key"]) == {"llc@prose", "llc@code", "ablation/zero", "ablation/mean", "icl"}
    assert keys.set_index("key").loc["icl", "level"] == "model"
    assert resolve_key(df, "ablation/zero") == "ablation/zero"
    assert resolve_key(df, "llc@code") == "llc@code"
    with pytest.raises(AnalysisError, match="ambiguous"):
        resolve_key(df, "llc")
    with pytest.raises(AnalysisError, match="no signal matches"):
        resolve_key(df, "hessian-trace")
    # the store's own variant column ("target=…,method=…,side=…") gives the same keys
    store = pd.DataFrame(rows("composition", "0:1->1:2", [0.1, 0.2, 0.3, 0.4], kind="probe", dataset="weights"))
    store["variant"] = "side=k"
    table = annotate(store)
    assert set(table["key"]) == {"composition/k"} and set(table["level"]) == {"pair"}


def test_two_configurations_of_one_signal_stay_apart():
    a = pd.DataFrame(rows("llc", "0:0", [1, 2, 3, 4]))
    b = a.assign(config_hash="h2", value=a["value"] * 10)
    keys = set(signal_keys(pd.concat([a, b]))["key"])
    assert keys == {"llc#h1", "llc#h2"}
    assert trajectories(pd.concat([a, b]), "llc#h2").iloc[0].tolist() == [10, 20, 30, 40]


def test_trajectories_pivot_average_and_fill():
    df = pd.DataFrame(rows("llc", "1:0", [1, np.nan, 3, 5]) + rows("llc", "0:2", [4, 4, 4, 4])
                      + rows("llc", "0:10", [0, 1, 0, 1]) + rows("llc", "0:2", [6, 6, 6, 6]))
    wide = trajectories(df, "llc")
    assert list(wide.index) == ["0:2", "0:10", "1:0"]  # layer:head order, not string order
    assert list(wide.columns) == [0, 100, 200, 400]
    assert wide.loc["0:2"].tolist() == [5, 5, 5, 5]  # repeated rows averaged
    assert wide.loc["1:0"].tolist() == [1, 2, 3, 5]  # gap filled linearly in step


def test_normalise_and_log_resample():
    x = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    z = normalise(x, "zscore")
    assert np.allclose(z[0], [-1.224744871, 0, 1.224744871]) and np.all(z[1] == 0)
    assert np.allclose(normalise(x, "minmax")[0], [0, 0.5, 1]) and np.all(normalise(x, "minmax")[1] == 0)
    with pytest.raises(AnalysisError):
        normalise(x, "bogus")
    steps = [0, 100, 1000, 10000]
    wide = pd.DataFrame([np.log10(np.asarray(steps) + 100.0)], index=["0:0"], columns=steps)
    res = log_resample(wide, 7)
    assert np.allclose(np.log10(np.asarray(res.columns) + 100), np.linspace(2, np.log10(10100), 7))
    # a curve linear in log10(step + offset) stays on the line after resampling on the log grid
    assert np.allclose(res.iloc[0].to_numpy(), np.log10(np.asarray(res.columns) + 100), atol=0.02)


def test_stack_keeps_common_heads_and_steps():
    df = pd.DataFrame(rows("llc", "0:0", [1, 2, 3, 4]) + rows("llc", "0:1", [4, 3, 2, 1])
                      + rows("llc", "0:0", [1, 1, 2, 2], dataset="code") + rows("llc", "0:1", [2, 2, 1, 1],
                                                                               dataset="code")
                      + rows("llc", "0:2", [1, 2, 3, 4], dataset="code"))
    ts = stack_trajectories(df, ["llc@prose", "llc@code"])
    assert ts.heads == ["0:0", "0:1"] and ts.values.shape == (2, 4, 2)
    assert ts.flat.shape == (2, 8)
    assert np.allclose(ts.values.mean(axis=1), 0)


def test_stack_leaves_out_steps_not_at_a_local_minimum():
    """The one rule for every verb: a step whose median head LLC is negative is dropped and listed, for LLC
    signals only; the curves are stacked on the remaining steps."""
    steps = (0, 100, 200, 400, 800)
    df = pd.DataFrame(rows("llc", "0:0", [-3, 1, 2, 3, 4], steps) + rows("llc", "0:1", [-2, 4, 3, 2, 1], steps)
                      + rows("llc", "0:2", [0.5, 1, 1, 2, 2], steps)
                      + rows("hessian_trace", "0:0", [-3, 1, 2, 3, 4], steps)
                      + rows("hessian_trace", "0:1", [-2, 4, 3, 2, 1], steps)
                      + rows("hessian_trace", "0:2", [-1, 1, 1, 2, 2], steps))
    ts = stack_trajectories(df, ["llc@prose"])
    assert ts.left_out == [0] and list(ts.steps) == [100, 200, 400, 800] and ts.by_layer()[0].left_out == [0]
    assert stack_trajectories(df, ["hessian_trace@prose"]).left_out == []  # the rule is about LLCs
    assert stack_trajectories(df, ["llc@prose", "hessian_trace@prose"]).left_out == [0]
    assert stack_trajectories(df, ["llc@prose"], drop_below_minimum=False).left_out == []
    with pytest.raises(AnalysisError, match="left out: median head LLC < 0"):
        stack_trajectories(df[df["step"].isin([0, 100, 200])], ["llc@prose"])


def test_head_types_from_labels_or_selectivity():
    labelled = pd.DataFrame(rows("head_class", "0:0", [9, 9, 9, 9], kind="probe", label="previous")
                            + rows("head_class", "0:1", [1, 1, 1, 1], kind="probe", label="unclassified"))
    assert head_types(labelled).to_dict() == {"0:0": "previous", "0:1": "unclassified"}
    sel = pd.DataFrame(rows("selectivity", "0:0", [1, 1, 1, 8], kind="probe", target="previous")
                       + rows("selectivity", "0:0", [1, 1, 1, 2], kind="probe", target="induction")
                       + rows("selectivity", "1:0", [1, 1, 1, 2], kind="probe", target="previous"))
    assert head_types(sel).to_dict() == {"0:0": "previous", "1:0": "unclassified"}
    assert head_types(pd.DataFrame(rows("llc", "0:0", [1, 2, 3, 4]))).empty
