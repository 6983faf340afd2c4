"""The layout's contracts: the results layer reads a finished run without the estimation stack
(`import rllc.results`, and the analysis path through it, loads no torch); checkpoint files are read in
one place; curvature and sampling share their losses through a module neither owns."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["rllc.results", "rllc.study.findings"])
def test_reading_results_imports_no_torch(module):
    code = f"import sys, {module}; bad = [m for m in ('torch', 'rllc.runs', 'rllc.sampling') if m in sys.modules]; " \
           "print(','.join(bad)); sys.exit(1 if bad else 0)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, f"import {module} loaded {run.stdout.strip()} {run.stderr[-500:]}"


def test_one_error_class_for_runs_and_results():
    from rllc.results import RunError
    from rllc.runs import RunError as FromRuns

    assert FromRuns is RunError


def test_checkpoint_files_are_read_in_one_place():
    """Both loaders read weights through rllc.models.io, and neither imports the other back: the Hugging
    Face module never imports rllc.models.checkpoints; torch.load appears in io alone."""
    import ast
    from pathlib import Path

    import rllc.models as models

    root = Path(models.__file__).parent
    for name in ("hf.py", "io.py", "safety.py"):
        tree = ast.parse((root / name).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "rllc.models.checkpoints" not in imported, name
    for path in root.glob("*.py"):
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call) and (
                 (isinstance(n.func, ast.Attribute) and n.func.attr == "load" and getattr(n.func.value, "id", "") == "torch")
                 or (isinstance(n.func, ast.Name) and n.func.id in ("load_file", "safe_open")))]
        assert not calls or path.name == "io.py", f"{path.name} reads weights itself"


def test_curvature_does_not_reach_into_sampling():
    """Losses and the batch stream live in rllc.losses, owned by neither estimator family: curvature
    imports nothing from rllc.sampling."""
    import ast
    from pathlib import Path

    import rllc.curvature as curvature

    for path in Path(curvature.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not [m for m in modules if m.startswith("rllc.sampling")], path.name


# The layers, bottom up (docs/design.md): a module imports only from its own unit or from lower layers.
LAYERS = [
    {"progress", "schedule", "deprecation", "results"},  # utilities; the torch-free results layer (the store's contract)
    {"data", "models"},  # corpora and tokens; the transformer, checkpoint I/O, components
    {"losses"},  # losses and batch streams shared by the estimators
    {"sampling", "curvature", "behavior", "train"},  # estimators and training
    {"runs"},  # series over checkpoints, writing the store
    {"analysis"},  # reading the store: clustering, comparison, findings, report
    {"cluster", "compare", "demo", "study"},  # the demo study (rllc.study); old paths that forward (deprecated)
    {"cli"},  # the command line
]
READS_ONLY = {"analysis": {"results", "progress", "deprecation"}}  # analysis works from a finished run alone


def _import_graph():
    """{module: {imported rllc module}} over src/rllc, lazy (function-level) imports included; `from pkg
    import sub` counts as importing the submodule."""
    import ast
    from pathlib import Path

    import rllc

    src = Path(rllc.__file__).parent.parent
    paths = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (src / "rllc").rglob("*.py")}
    graph = {}
    for mod, path in paths.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in paths else target for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[mod] = {m for m in found if m in paths and m != mod}
    return graph


def _unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "rllc"


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target, path + [target])):
                return found
        state[module] = 2
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m, [m]))), None)


def test_import_graph_has_no_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]  # the check bites
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layers_import_only_downward():
    rank = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    graph = _import_graph()
    units = {_unit(m) for m in graph} - {"rllc"}
    assert units <= set(rank), f"units without a layer: {sorted(units - set(rank))}; add them to LAYERS"
    wrong = []
    for module, targets in graph.items():
        a = _unit(module)
        for target in targets:
            b = _unit(target)
            if a == b or a == "rllc":
                continue
            if rank[b] >= rank[a] or (a in READS_ONLY and b not in READS_ONLY[a]):
                wrong.append(f"{module} imports {target} ({a} -> {b})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_old_paths_forward_with_a_warning():
    """One public path per function: the old ones hand out the same object and warn (for one release)."""
    import rllc.analysis
    import rllc.analysis.synthetic
    import rllc.results
    import rllc.study.demo
    import rllc.study.findings

    for old, new, name in (("rllc.cluster", rllc.analysis, "cluster_trajectories"),
                           ("rllc.compare", rllc.analysis, "compare"),
                           ("rllc.runs", rllc.results, "load_results"),
                           ("rllc.demo", rllc.study.demo, "run_demo"),
                           ("rllc.analysis.findings", rllc.study.findings, "study_findings"),
                           ("rllc.analysis", rllc.study.findings, "StudyFindings"),
                           ("rllc.analysis.demo_data", rllc.analysis.synthetic, "planted_results")):
        module = importlib.import_module(old)
        with pytest.warns(DeprecationWarning, match=f"use {new.__name__}.{name}"):
            assert getattr(module, name) is getattr(new, name)
    import rllc.runs

    with pytest.raises(AttributeError):
        rllc.runs.compare  # forwards only the readers
    with pytest.raises(AttributeError):
        rllc.analysis.timings_finding  # forwards only the two names it used to export


def test_renames_keep_the_stored_hashes():
    """Renaming the option precision -> compute_dtype and the probe estimator behaviour -> behavior changed no
    config_hash: stored runs keep their finished tasks (values computed with the code before the renames)."""
    from rllc.runs.options import ESTIMATE_DEFAULTS, PROBE_DEFAULTS, config_hash, estimator_params, merge_options

    opts = merge_options(ESTIMATE_DEFAULTS, {"estimators": ["llc"]})
    assert config_hash(estimator_params("llc", opts, "fp0")) == "6921291c592d"
    assert config_hash(estimator_params("susceptibility", opts, "fp0")) == "6c4070b7ddf5"
    assert config_hash(estimator_params("behavior", merge_options(PROBE_DEFAULTS, {}), "fp0")) == "b2d431e03e9c"
    with pytest.warns(FutureWarning, match="use 'compute_dtype'"):
        old = merge_options(ESTIMATE_DEFAULTS, {"estimators": ["llc"], "precision": "bf16"})
    assert old["compute_dtype"] == "bf16" and "precision" not in old


def test_a_store_from_before_the_se_column_loads_and_is_migrated_on_write(tmp_path):
    """Stores written before the vocabulary was unified name the standard error `spread`: they read as `se`
    (the reader changes nothing on disk), and the writer renames the column when it opens them."""
    import sqlite3

    from rllc.results import SCHEMA, load_results, result_columns
    from rllc.runs.store import Store

    conn = sqlite3.connect(tmp_path / "results.sqlite")
    conn.executescript(SCHEMA.replace("se REAL", "spread REAL"))
    conn.execute("INSERT INTO results (task, step, checkpoint, kind, signal, component, dataset, value, spread, "
                 "config_hash, seconds, diagnostics) VALUES ('t', 5, 'step_5.pt', 'estimate', 'llc', '0:1', 'prose', "
                 "2.5, 0.25, 'h', 1.0, '{}')")
    conn.commit()
    conn.close()
    df = load_results(tmp_path)
    assert df.loc[0, "value"] == 2.5 and df.loc[0, "se"] == 0.25 and "spread" not in df.columns
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        assert "spread" in result_columns(conn)  # reading rewrote nothing
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        assert "se" in result_columns(conn) and "spread" not in result_columns(conn)
    assert load_results(tmp_path).loc[0, "se"] == 0.25


def test_old_flags_still_parse_with_a_warning(capsys):
    """Flags are named after the keywords they feed; the old names work for one release, with a warning line on
    stderr, and land in the same place."""
    from rllc.cli import build_parser

    parser = build_parser()
    old = parser.parse_args(["cluster", "RUN", "--signal", "a", "--signal", "b", "--normalise", "minmax",
                             "--points", "5", "--linear-x"])
    new = parser.parse_args(["cluster", "RUN", "--key", "a", "--key", "b", "--normalisation", "minmax",
                             "--n-points", "5", "--no-log-x"])
    for name in ("cluster_keys", "normalisation", "n_points", "log_x"):
        assert getattr(old, name) == getattr(new, name), name
    assert new.cluster_keys == ["a", "b"] and new.log_x is False
    old = parser.parse_args(["compare", "RUN", "--reference", "x", "--stage-signal", "y"])
    assert old.reference_keys == ["x"] and old.stage_key == "y"
    old = parser.parse_args(["report", "RUN", "--cluster-signal", "a", "--compare-signal", "b"])
    assert old.cluster_keys == ["a"] and old.compare_keys == ["b"]
    assert parser.parse_args(["estimate", "CKPT", "--precision", "bf16"]).compute_dtype == "bf16"
    err = capsys.readouterr().err
    for flag, new_flag in (("--signal", "--key"), ("--normalise", "--normalisation"), ("--points", "--n-points"),
                           ("--linear-x", "--no-log-x"), ("--reference", "--reference-key"),
                           ("--stage-signal", "--stage-key"), ("--cluster-signal", "--cluster-key"),
                           ("--compare-signal", "--compare-key"), ("--precision", "--compute-dtype")):
        assert f"warning: {flag} is deprecated and will be removed in the next release; use {new_flag}" in err
