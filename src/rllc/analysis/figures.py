"""Figures (matplotlib, Agg backend, PNG). Every function draws one figure,
writes it to `path` when given, and returns the matplotlib Figure.

Time axes with ``log_x=True`` are spaced by log10(step + offset) (offset: the
smallest positive step) and labelled with the steps themselves, so that step 0
has a place on the axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from rllc.analysis.critical import Smoothing, smooth_curve  # noqa: E402
from rllc.analysis.trajectories import (  # noqa: E402
    PAIR_SEP,
    annotate,
    default_offset,
    head_sort_key,
    is_head,
    layer_of,
    resolve_key,
    sort_heads,
    trajectories,
)

TYPE_COLOURS = {
    "previous": "#1f77b4", "induction": "#d62728", "self": "#2ca02c", "current": "#2ca02c",
    "duplicate": "#ff7f0e", "first": "#9467bd", "local": "#8c564b", "unclassified": "#9a9a9a",
}
KIND_STYLE = {"peak": ("^", "#d62728"), "trough": ("v", "#1f77b4"), "rise": ("o", "#2ca02c"),
              "fall": ("s", "#ff7f0e")}
DPI = 110


def _save(fig: Figure, path) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return fig


def colour_map(labels: Sequence) -> dict:
    """A colour per distinct label: head types get fixed colours, other labels
    (cluster numbers) the tab10 cycle in sorted order."""
    out = {}
    palette = plt.get_cmap("tab10").colors
    others = sorted({str(v) for v in labels if str(v) not in TYPE_COLOURS}, key=lambda s: (len(s), s))
    for i, lab in enumerate(others):
        out[lab] = palette[i % len(palette)]
    for lab in {str(v) for v in labels}:
        if lab in TYPE_COLOURS:
            out[lab] = TYPE_COLOURS[lab]
    return out


def set_log_steps(ax, steps: Sequence[float], offset: float | None = None) -> float:
    """Space the x axis by log10(step + offset) and label it with steps."""
    steps = np.asarray(steps, dtype=float)
    off = default_offset(steps) if offset is None else float(offset)
    ax.set_xscale("function", functions=(lambda s: np.log10(np.maximum(s + off, 1e-12)),
                                         lambda x: 10 ** x - off))
    hi = steps.max()
    ticks = [0.0] + [10.0 ** e for e in range(0, 12) if off <= 10.0 ** e <= hi * 1.01]
    if len(ticks) < 4:
        ticks = sorted(set(ticks) | {float(v) for v in np.quantile(steps, [0.5, 1.0])})
    ax.set_xticks(ticks)
    ax.set_xticklabels([_fmt_step(t) for t in ticks])
    ax.set_xlim(steps.min(), hi)
    return off


def _fmt_step(s: float) -> str:
    if s >= 1000:
        return f"{s / 1000:g}k"
    return f"{s:g}"


def shade_stages(ax, stages: pd.DataFrame | None, label: bool = True) -> None:
    """Alternate light bands for the stages, a dashed line at each boundary."""
    if stages is None or len(stages) == 0:
        return
    for i, r in enumerate(stages.itertuples()):
        if i % 2 == 0:
            ax.axvspan(r.start, r.end, color="#000000", alpha=0.05, lw=0, zorder=0)
        if r.boundary:
            ax.axvline(r.end, color="#555555", lw=0.8, ls="--", zorder=1)
        if label:
            ax.text(np.sqrt(max(r.start, 1.0) * max(r.end, 1.0)) if r.start > 0 else r.end / 2, 1.0, r.stage,
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8, color="#444444")


def _spread_labels(ends: Mapping[str, float], values: np.ndarray, gap: float = 0.045) -> dict[str, float]:
    """Label heights near the curves' last values, at least `gap` × the y range apart."""
    finite = values[np.isfinite(values)]
    span = float(finite.max() - finite.min()) if finite.size else 1.0
    step = gap * (span or 1.0)
    order = sorted(ends, key=lambda h: ends[h])
    placed: dict[str, float] = {}
    last = -np.inf
    for h in order:
        y = max(float(ends[h]), last + step)
        placed[h] = y
        last = y
    shift = (max(placed.values()) - max(ends.values())) / 2 if placed else 0.0
    return {h: y - min(shift, step * len(order) / 2) for h, y in placed.items()}


def plot_head_curves(
    wide: pd.DataFrame,
    colour_by: pd.Series | Mapping | None = None,
    *,
    title: str = "",
    ylabel: str = "",
    log_x: bool = True,
    stages: pd.DataFrame | None = None,
    legend_title: str = "",
    label_heads: bool = True,
    path=None,
) -> Figure:
    """Per-head curves (rows of `wide`: heads × steps), one panel per layer,
    coloured by `colour_by` (head → cluster or head type)."""
    heads = [h for h in wide.index]
    layers = sorted({layer_of(h) for h in heads})
    colour_by = pd.Series(colour_by if colour_by is not None else {}, dtype=object)
    labels = {h: str(colour_by.get(h, "")) for h in heads}
    colours = colour_map([v for v in labels.values() if v])
    n = len(layers)
    ncols = min(n, 4)  # many layers wrap into rows of 4 panels
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(min(5.2 * ncols, 16), 3.6 * nrows), sharey=True, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes = axes.reshape(1, -1)
    steps = np.asarray(wide.columns, dtype=float)
    for ax, layer in zip(axes[0], layers):
        layer_heads = [h for h in heads if layer_of(h) == layer]
        ends = {}
        for h in layer_heads:
            c = colours.get(labels[h], "#444444")
            y = wide.loc[h].to_numpy(dtype=float)
            ax.plot(steps, y, color=c, lw=1.4, alpha=0.9)
            ends[h] = y[-1]
        if label_heads and len(layer_heads) <= 16:
            for h, y_text in _spread_labels(ends, wide.to_numpy(dtype=float)).items():
                ax.annotate(h, (steps[-1], ends[h]), xytext=(steps[-1], y_text), textcoords="data", fontsize=7,
                            color=colours.get(labels[h], "#444444"), va="center", annotation_clip=False,
                            xycoords="data")
        if log_x:
            set_log_steps(ax, steps)
        shade_stages(ax, stages)
        ax.set_title(f"layer {layer}", fontsize=10, pad=12 if stages is not None and len(stages) else 4)
        ax.set_xlabel("step")
        ax.grid(alpha=0.25, lw=0.5)
    for row in range(nrows):
        axes[0][row * ncols].set_ylabel(ylabel)
    if colours:
        handles = [Line2D([], [], color=c, lw=2, label=lab) for lab, c in colours.items()]
        handles.sort(key=lambda hd: (len(hd.get_label()), hd.get_label()))
        axes[0][ncols - 1].legend(handles=handles, title=legend_title or None, fontsize=8, title_fontsize=8,
                           loc="upper left", bbox_to_anchor=(1.06, 1.0), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, y=1.04)
    fig.tight_layout()
    return _save(fig, path)


def plot_signal_curves(df: pd.DataFrame, key: str, colour_by=None, **kwargs) -> Figure:
    """`plot_head_curves` of one signal key of a results table."""
    table = annotate(df)
    name = resolve_key(table, key)
    kwargs.setdefault("ylabel", name)
    return plot_head_curves(trajectories(table, name), colour_by, **kwargs)


def plot_cluster_metrics(metrics: pd.DataFrame, chosen: Mapping[str, int] | None = None, *, title: str = "",
                         path=None) -> Figure:
    """Silhouette, Calinski–Harabasz and Davies–Bouldin against k, a line per
    algorithm; a ring marks each algorithm's chosen k."""
    panels = (("silhouette", "silhouette (higher is better)"),
              ("calinski_harabasz", "Calinski–Harabasz (higher is better)"),
              ("davies_bouldin", "Davies–Bouldin (lower is better)"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    palette = plt.get_cmap("tab10").colors
    for ax, (col, label) in zip(axes, panels):
        for i, (algorithm, g) in enumerate(metrics.groupby("algorithm", sort=False)):
            g = g.sort_values("k")
            ax.plot(g["k"], g[col], marker="o", ms=4, color=palette[i], label=algorithm)
            if chosen and algorithm in chosen:
                at = g[g["k"] == chosen[algorithm]]
                ax.scatter(at["k"], at[col], s=120, facecolors="none", edgecolors=palette[i], linewidths=1.6)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("k")
        ax.set_xticks(sorted(metrics["k"].unique()))
        ax.grid(alpha=0.25, lw=0.5)
    axes[-1].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, y=1.03)
    fig.tight_layout()
    return _save(fig, path)


def plot_dendrogram(values: np.ndarray, heads: Sequence[str], types: pd.Series | None = None, *,
                    title: str = "", path=None) -> Figure:
    """Ward dendrogram (scipy) of the concatenated, normalised curves; leaf
    labels coloured by head type."""
    from scipy.cluster.hierarchy import dendrogram, linkage

    link = linkage(np.asarray(values, dtype=float).reshape(len(heads), -1), method="ward")
    types = pd.Series(dtype=object) if types is None else types
    labels = [f"{h}  {types.get(h, '')}".rstrip() for h in heads]
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.42 * len(heads) + 2), 22.0), 4.0))
    dendrogram(link, labels=labels, ax=ax, leaf_rotation=90, leaf_font_size=8 if len(heads) <= 48 else 5,
               link_color_func=lambda _: "#555555")
    colours = colour_map([str(t) for t in types.values]) if len(types) else {}
    for tick in ax.get_xticklabels():
        head = tick.get_text().split()[0]
        tick.set_color(colours.get(str(types.get(head, "")), "#222222"))
    ax.set_ylabel("Ward distance")
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_subdivision_tree(tree: pd.DataFrame, heads: Sequence[str] | None = None, *, title: str = "",
                          path=None) -> Figure:
    """The subdivision tree: one row per k (top: smallest), a node per cluster
    (area ∝ size, labelled with its size, or its heads when it has at most 3),
    an edge from each cluster to the cluster it came from (faint when the
    child took less than 90% of its members from that parent)."""
    ks = sorted(tree["k"].unique())
    fig, ax = plt.subplots(figsize=(11, 0.75 * len(ks) + 1.2))
    pos: dict[tuple[int, int], float] = {}
    order: dict[int, list[int]] = {}
    for i, k in enumerate(ks):
        level = tree[tree["k"] == k]
        if i == 0:
            children = sorted(level["child"], key=lambda c: -int(level.loc[level["child"] == c, "size"].iloc[0]))
        else:
            parent_rank = {p: j for j, p in enumerate(order[ks[i - 1]])}
            children = sorted(level["child"], key=lambda c: (
                parent_rank.get(int(level.loc[level["child"] == c, "parent"].iloc[0]), 0),
                -int(level.loc[level["child"] == c, "size"].iloc[0])))
        order[k] = [int(c) for c in children]
        for j, c in enumerate(order[k]):
            pos[(k, c)] = (j + 0.5) / len(order[k])
    total = tree[tree["k"] == ks[0]]["size"].sum()
    for i, k in enumerate(ks):
        level = tree[tree["k"] == k]
        for r in level.itertuples():
            x, y = pos[(k, r.child)], -i
            if i > 0 and (ks[i - 1], r.parent) in pos:
                ax.plot([pos[(ks[i - 1], r.parent)], x], [y + 1, y], color="#555555",
                        alpha=0.9 if r.share >= 0.9 else 0.3, lw=1.2, zorder=1)
            ax.scatter([x], [y], s=60 + 900 * r.size / max(total, 1), color="#4c72b0" if r.splits else "#9ab0d6",
                       edgecolors="white", zorder=2)
            text = str(r.size)
            if heads is not None and r.size <= 3:
                text = ",".join(heads[m] for m in r.members)
            ax.text(x, y - 0.32, text, ha="center", va="top", fontsize=7, color="#222222")
    ax.set_yticks([-i for i in range(len(ks))])
    ax.set_yticklabels([f"k={k}" for k in ks])
    ax.set_xticks([])
    ax.set_ylim(-len(ks) + 0.3, 0.6)
    ax.set_xlim(0, 1)
    ax.spines[["top", "right", "bottom"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_correlation_matrix(matrix: pd.DataFrame, *, title: str = "", annotate_values: bool | None = None,
                            path=None) -> Figure:
    """A signal × signal rank-correlation matrix, −1 (blue) … 1 (red)."""
    n = len(matrix)
    size = max(5.0, 0.42 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(matrix.to_numpy(dtype=float), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(matrix.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(matrix.index, fontsize=8)
    if annotate_values is None:
        annotate_values = n <= 22
    if annotate_values:
        for i in range(n):
            for j in range(n):
                v = matrix.iat[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}".replace("0.", ".").replace("-.", "−."), ha="center", va="center",
                            fontsize=6, color="white" if abs(v) > 0.6 else "#222222")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="rank correlation")
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_token_susceptibility(values: Mapping[str, np.ndarray], *, title: str = "", path=None) -> Figure:
    """Per component (rows: heads in order, then the full model) the susceptibility at each target
    position of one probe set, averaged over its sequences (values: component -> [n_seq, T-1]); a
    diverging colour scale centred at 0, each row scaled to its own largest magnitude so that weak and
    strong components both show their pattern (the row's scale is printed at its right)."""
    names = sort_heads([c for c in values if is_head(c)]) + [c for c in values if not is_head(c)]
    rows = np.stack([np.asarray(values[c], dtype=float).mean(axis=0) for c in names])
    scale = np.abs(rows).max(axis=1, keepdims=True)
    scaled = rows / np.where(scale > 0, scale, 1.0)
    fig, ax = plt.subplots(figsize=(min(14.0, 3.0 + 0.12 * rows.shape[1]), 1.2 + 0.28 * len(names)))
    ax.imshow(scaled, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("target position (predicting token p)")
    for i, s in enumerate(scale[:, 0]):
        ax.text(rows.shape[1] - 0.3, i, f" {s:.1e}", va="center", ha="left", fontsize=7, color="#444444")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_correlation_over_time(per_step: pd.DataFrame, key: str, others: Sequence[str] | None = None, *,
                               log_x: bool = True, stages: pd.DataFrame | None = None, title: str = "",
                               path=None) -> Figure:
    """Rank correlation over heads, at each checkpoint, of `key` with every
    other signal: a heatmap, a row per other signal, a column per checkpoint
    (−1 blue … 1 red), stage boundaries as dashed lines."""
    rows = per_step[(per_step["signal_a"] == key) | (per_step["signal_b"] == key)].copy()
    rows["other"] = np.where(rows["signal_a"] == key, rows["signal_b"], rows["signal_a"])
    if others is not None:
        rows = rows[rows["other"].isin(list(others))]
    order = list(dict.fromkeys(rows["other"]))
    wide = rows.pivot_table(index="other", columns="step", values="rho", aggfunc="mean", dropna=False)
    wide = wide.reindex(index=order, columns=sorted(wide.columns))
    steps = np.asarray(wide.columns, dtype=float)
    fig, ax = plt.subplots(figsize=(10.5, 0.26 * len(order) + 1.5))
    off = default_offset(steps) if len(steps) else 1.0
    xs = np.log10(steps + off) if log_x else steps
    edges = np.concatenate([[xs[0]], (xs[1:] + xs[:-1]) / 2, [xs[-1]]]) if len(xs) > 1 else np.array([0, 1])
    im = ax.pcolormesh(edges, np.arange(len(order) + 1), wide.to_numpy(dtype=float), cmap="RdBu_r", vmin=-1,
                       vmax=1, shading="flat")
    if log_x and len(steps):
        ticks = [0.0] + [10.0 ** e for e in range(0, 12) if off <= 10.0 ** e <= steps.max()]
        ax.set_xticks(np.log10(np.asarray(ticks) + off))
        ax.set_xticklabels([_fmt_step(t) for t in ticks])
    if stages is not None:
        for r in stages.itertuples():
            if r.boundary:
                ax.axvline(np.log10(r.end + off) if log_x else r.end, color="#222222", lw=0.9, ls="--")
    ax.set_yticks(np.arange(len(order)) + 0.5)
    ax.set_yticklabels(order, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("step")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label=f"ρ with {key}")
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_composition_heatmaps(df: pd.DataFrame, *, signal: str = "composition", max_pairs: int = 24,
                              log_x: bool = True, path=None) -> Figure | None:
    """Composition scores over training: one heatmap per side (q, k, v), a row
    per sender->receiver pair, a column per checkpoint. Only the `max_pairs`
    pairs with the largest score anywhere are shown (rows sorted by
    pair). None when the table has no pair rows of `signal`."""
    table = annotate(df)
    rows = table[(table["signal"] == signal) & (table["level"] == "pair")].dropna(subset=["value"])
    if rows.empty:
        return None
    top = rows.groupby("component")["value"].max().sort_values(ascending=False).index[:max_pairs]
    pairs = sorted(top, key=lambda c: (head_sort_key(c.split(PAIR_SEP)[0]), head_sort_key(c.split(PAIR_SEP)[1])))
    variants = sorted(rows["variant"].unique(), key=lambda v: ("qkv".find(v) if v in "qkv" else 9, v))
    vmax = float(rows[rows["component"].isin(pairs)]["value"].max())
    vmin = float(rows[rows["component"].isin(pairs)]["value"].min())
    fig, axes = plt.subplots(1, len(variants), figsize=(4.6 * len(variants) + 1.2, 0.22 * len(pairs) + 1.6),
                             sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants):
        sub = rows[rows["variant"] == variant]
        wide = sub.pivot_table(index="component", columns="step", values="value", aggfunc="mean")
        wide = wide.reindex(index=pairs, columns=sorted(wide.columns))
        steps = np.asarray(wide.columns, dtype=float)
        off = default_offset(steps)
        edges_x = np.log10(steps + off) if log_x else steps
        mids = np.concatenate([[edges_x[0]], (edges_x[1:] + edges_x[:-1]) / 2, [edges_x[-1]]])
        im = ax.pcolormesh(mids, np.arange(len(pairs) + 1), wide.to_numpy(dtype=float), cmap="magma",
                           vmin=vmin, vmax=vmax, shading="flat")
        ticks = [0.0] + [10.0 ** e for e in range(0, 12) if off <= 10.0 ** e <= steps.max()]
        ax.set_xticks(np.log10(np.asarray(ticks) + off) if log_x else ticks)
        ax.set_xticklabels([_fmt_step(t) for t in ticks])
        ax.set_yticks(np.arange(len(pairs)) + 0.5)
        ax.set_yticklabels(pairs, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{signal} {variant}".strip(), fontsize=10)
        ax.set_xlabel("step")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.025, pad=0.01, label="score")
    return _save(fig, path)


def plot_model_curve(curve: pd.Series, stages: pd.DataFrame | None = None, *, smoothing: Smoothing = Smoothing(),
                     ylabel: str = "LLC", title: str = "", log_x: bool = True, path=None) -> Figure:
    """The full-model curve (dots: checkpoints; line: smoothed), stages shaded
    and numbered, boundaries dashed."""
    fig, ax = plt.subplots(figsize=(10, 3.4))
    steps = curve.index.to_numpy(dtype=float)
    ax.plot(steps, curve.to_numpy(dtype=float), "o", ms=2.5, color="#4c72b0", alpha=0.7, label="checkpoints")
    c = smooth_curve(steps, curve.to_numpy(dtype=float), smoothing)
    ax.plot(c.steps, c.y, color="#1b3a6b", lw=1.6, label=f"smoothed ({c.description})")
    if log_x:
        set_log_steps(ax, steps)
    shade_stages(ax, stages)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.25, lw=0.5)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    if title:
        ax.set_title(title, fontsize=11, pad=14)
    fig.tight_layout()
    return _save(fig, path)


def plot_critical_points(wide: pd.DataFrame, points: pd.DataFrame, *, smoothing: Smoothing = Smoothing(),
                         ncols: int = 4, ylabel: str = "", title: str = "", log_x: bool = True,
                         path=None) -> Figure:
    """Small multiples, one per row of `wide`: checkpoints (dots), the smoothed
    curve, and its critical points (▲ peak, ▼ trough, ● rise, ■ fall)."""
    heads = list(wide.index)
    nrows = -(-len(heads) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.3 * nrows), squeeze=False)
    steps = np.asarray(wide.columns, dtype=float)
    for ax, h in zip(axes.flat, heads):
        y = wide.loc[h].to_numpy(dtype=float)
        ax.plot(steps, y, ".", ms=2.5, color="#9a9a9a")
        c = smooth_curve(steps, y, smoothing)
        ax.plot(c.steps, c.y, color="#333333", lw=1.2)
        for p in points[points["component"] == h].itertuples():
            marker, colour = KIND_STYLE.get(p.kind, ("x", "k"))
            ax.plot([p.step], [p.value], marker=marker, color=colour, ms=7, ls="none")
        if log_x:
            set_log_steps(ax, steps)
        ax.set_title(h, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25, lw=0.5)
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    handles = [Line2D([], [], marker=m, color=c, ls="none", label=k) for k, (m, c) in KIND_STYLE.items()]
    fig.legend(handles=handles, loc="upper right", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title or ylabel, fontsize=11, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path)
