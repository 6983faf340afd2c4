"""Per-head susceptibilities over the demo series: do the induction heads separate on repeated tokens?

    rllc estimate checkpoints/demo --out runs/demo --estimators susceptibility --datasets train \\
        --components heads --steps "$(grep '^steps' experiments/demo_estimate.toml | cut -d'"' -f2)" \\
        --probe-datasets prose,code,repeated --probe-sequences 8 --epsilon 1e-3 --nbeta 30 --gamma 200 \\
        --chains 2 --draws 50 --burn-in 7 --batch-size 8 --workers 2 --threads 1
    python experiments/susceptibility_demo.py [--run runs/demo]

The run directory must also hold the demo's probe rows (`make demo` writes them), for the behavioural types.
The measure, fixed before the result was looked at: over the last third of the checkpoints that have
susceptibilities (the span the data-refinement finding uses), each head's mean susceptibility on a probe set,
and the rank AUC P(induction head > other head) with whether the ranges separate (rllc.study.findings
rank_auc, behaviour_types); on the repeated probe also over the target positions of the second half only
(where a repeated token can be predicted from its first occurrence). Prints per-head tables and the cost per
checkpoint beside the wrLLC's; writes RUN_DIR/analysis/susceptibility_demo.png (per-head curves per probe).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rllc.analysis.figures import plot_head_curves
from rllc.study.findings import behaviour_types, rank_auc
from rllc.analysis.trajectories import annotate, trajectories
from rllc.results import load_results, load_susceptibility


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo")
    args = ap.parse_args()
    table = annotate(load_results(args.run))
    sus = table[(table["signal"] == "susceptibility") & (table["level"] == "head")]
    if sus.empty:
        raise SystemExit(f"{args.run}: no susceptibility rows; run the rllc estimate command in this script's docstring")
    types, _ = behaviour_types(table)
    steps = sorted(sus["step"].unique())
    late = steps[-max(1, math.ceil(len(steps) / 3)):]
    induction = [h for h, t in types.items() if t == "induction"]
    print(f"behavioural types (last checkpoint): {dict(types.value_counts())}; induction heads {induction}")
    print(f"late checkpoints: {late[0]:,} .. {late[-1]:,} ({len(late)})\n")
    rows = []
    for probe in sorted(sus["probe"].dropna().unique()):
        key = f"susceptibility/{probe}"
        curves = trajectories(table, key)
        mean_late = curves[late].mean(axis=1)
        measures = {"all positions": mean_late}
        if probe == "repeated":
            second = {}
            for h in curves.index:
                values = []
                for step in late:
                    r = sus[(sus["component"] == h) & (sus["probe"] == probe) & (sus["step"] == step)].iloc[0]
                    v, _ = load_susceptibility(args.run, r["checkpoint"], h, probe, r["dataset"], r["config_hash"])
                    values.append(v[:, v.shape[1] // 2:].mean())
                second[h] = float(np.mean(values))
            measures["second half"] = pd.Series(second)
        for what, m in measures.items():
            ind, other = m[[h for h in m.index if h in induction]], m[[h for h in m.index if h not in induction]]
            auc = rank_auc(ind, other)
            sep = bool(len(ind) and len(other) and (ind.min() > other.max() or ind.max() < other.min()))
            rows.append(dict(probe=probe, positions=what, induction_mean=ind.mean(), other_mean=other.mean(),
                             other_min=other.min(), other_max=other.max(), auc=auc, separated=sep))
            print(f"{probe:9s} {what:14s} " + "  ".join(f"{h} {m[h]:+.2e}" for h in m.index))
    print()
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    llc = table[(table["signal"] == "llc") & (table["dataset"] == "train")]
    sus_cost = sus.groupby("step")["seconds"].sum().median()
    llc_cost = llc[llc["level"] == "head"].groupby("step")["seconds"].sum().median()
    print(f"\ncost per checkpoint (median over checkpoints, 1 thread per task): susceptibility of 16 heads + model "
          f"{sus_cost:.1f} s (2 chains x 50 draws, 3 probe sets x 8 sequences); wrLLC of 16 heads {llc_cost:.1f} s "
          f"(2 chains x 120 draws)")
    out = Path(args.run) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    for probe in sorted(sus["probe"].dropna().unique()):
        plot_head_curves(trajectories(table, f"susceptibility/{probe}"), types, title=f"susceptibility, {probe} probe",
                         ylabel="mean susceptibility", legend_title="type",
                         path=out / f"susceptibility_demo_{probe}.png")
    print(json.dumps({"figures": [str(p) for p in sorted(out.glob('susceptibility_demo_*.png'))]}))


if __name__ == "__main__":
    main()
