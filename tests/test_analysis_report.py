"""Figures, the diagnostics section, the CLI verbs (through a fake results
loader), and the HTML report rendered in headless Chromium."""

import contextlib
import io
import re
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

from rllc import cli as rllc_cli
from rllc.analysis import cli
from rllc.analysis.synthetic import demo_config, demo_results, log_schedule
from rllc.analysis.report import build_report, diagnostics_table

pytestmark = pytest.mark.slow  # the module's fixture alone takes 10-35 s on 2 cores

CHROMIUM = "/usr/bin/chromium"
STEPS = sorted(set(log_schedule(24)) | {3000, 20000})  # the demo plants its two unhealthy estimates there
COMPARED = ["llc@prose", "llc@code", "hessian-trace", "induction", "previous_token", "participation_ratio",
            "ablation/zero", "composition.in/k"]


@pytest.fixture(scope="module")
def demo():
    return demo_results(steps=STEPS)


@pytest.fixture(scope="module")
def report(demo, tmp_path_factory):
    """The page as `rllc report RUN_DIR` writes it, the run read through a fake loader."""
    run = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        fake_run(mp, demo)
        args = ["report", str(run), "--algorithms", "kmeans,ward,kshape", "--k-max", "6"]
        for key in COMPARED:
            args += ["--compare-key", key]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert rllc_cli.main(args) == 0  # the `rllc` command: its report carries the demo study's findings
    page = Path(printed.getvalue().strip())
    assert page == run / "analysis" / "report.html" and page.is_file()
    return page


def test_build_report_without_config_or_behaviour(tmp_path):
    """Estimates only, no configuration: the page is still written, and says what it lacks."""
    df = demo_results(steps=log_schedule(12))
    df = df[df["kind"] == "estimate"]
    page = build_report(df, None, tmp_path, cluster_options=dict(algorithms=["kmeans"], ks=range(2, 4)),
                        compare_keys=["llc@prose", "hessian-trace"], compare_options=dict(curves=False))
    text = page.read_text()
    assert "No run configuration was found." in text and "Clusters" in text and "All estimates healthy." in text


def png_ok(path: Path) -> bool:
    img = mpimg.imread(path)
    return path.stat().st_size > 5_000 and img.ndim == 3 and float(img[..., :3].std()) > 0.02


def test_diagnostics_name_the_unhealthy_estimates(demo):
    problems = diagnostics_table(demo)
    named = problems.set_index(["step", "component", "dataset"])["problem"]
    assert set(named.index) == {(3000, "1:3", "prose"), (20000, "0:2", "code")}
    assert "r_hat 1.35 > 1.1" in list(named.loc[(3000, "1:3", "prose")])
    assert "chain 2 not finite" in list(named.loc[(20000, "0:2", "code")])
    assert not diagnostics_table(demo, rhat_max=2.0)["problem"].str.startswith("r_hat").any()
    assert len(diagnostics_table(demo, ess_min=20)) == len(problems) + 1  # ESS 18 at step 3000


def test_report_files_figures_and_self_containment(report):
    out = report.parent
    pngs = sorted(out.rglob("*.png"))
    names = {p.name for p in pngs}
    for expected in ("cluster_metrics_all_heads.png", "dendrogram_all_heads.png", "tree_kmeans_all_heads.png",
                     "clusters_kmeans_llc_prose_all_heads.png", "correlation_matrix.png", "stages.png",
                     "composition.png", "critical_points_llc_code.png", "curves_llc_prose.png"):
        assert expected in names
    assert all(png_ok(p) for p in pngs)
    for table in ("cluster_metrics", "cluster_assignments", "cluster_tree", "cluster_agreement", "cluster_choice"):
        assert len(pd.read_csv(out / "cluster" / f"{table}.csv")) > 0
    for table in ("correlations_per_step", "correlations_series", "critical_points", "alignment", "stages"):
        assert len(pd.read_csv(out / "compare" / f"{table}.csv")) > 0
    page = report.read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 10 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "r_hat 1.35 &gt; 1.1" in page and "1:3" in page and "chain 2 not finite" in page


def fake_run(monkeypatch, df):
    monkeypatch.setattr(cli, "load_results_table", lambda run_dir: df)
    monkeypatch.setattr(cli, "load_config", lambda run_dir: demo_config())


def test_cli_cluster_and_compare_write_into_run_dir(monkeypatch, tmp_path, capsys, demo):
    fake_run(monkeypatch, demo)
    run = tmp_path / "run"
    assert cli.main(["cluster", str(run), "--algorithms", "ward", "--k-max", "5", "--per-layer",
                     "--key", "llc@prose", "--key", "llc@code"]) == 0
    out = capsys.readouterr().out
    assert "layer 0: 8 heads, llc@prose ‖ llc@code" in out and out.strip().endswith(str(run / "analysis" / "cluster"))
    assert "left out" not in out
    metrics = pd.read_csv(run / "analysis" / "cluster" / "cluster_metrics.csv")
    assert set(metrics["scope"]) == {"layer 0", "layer 1"} and metrics["k"].max() == 5
    assert cli.main(["compare", str(run), "--out", str(tmp_path / "cmp"), "--key", "llc@prose",
                     "--key", "induction", "--key", "participation_ratio", "--smoothing", "savgol",
                     "--width", "0.2"]) == 0
    series = pd.read_csv(tmp_path / "cmp" / "correlations_series.csv")
    assert len(series) == 3
    # the first checkpoint below a local minimum (every head's LLC negative there): left out, and said so
    first = demo["step"].min()
    descended = demo.copy()
    descended.loc[(descended["step"] == first) & (descended["signal"] == "llc"), "value"] = -5.0
    fake_run(monkeypatch, descended)
    assert cli.main(["cluster", str(run), "--algorithms", "ward", "--k-max", "5",
                     "--key", "llc@prose", "--key", "llc@code"]) == 0
    assert f"left out: step(s) {int(first)} (median head LLC < 0" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "cmp" / "critical_points.csv")["smoothing"].str.startswith("savitzky-golay").all()
    assert cli.main(["cluster", str(run), "--list-signals"]) == 0
    assert "llc@code" in capsys.readouterr().out
    assert cli.main(["cluster", str(run), "--key", "no-such-signal"]) == 2
    assert "no signal matches 'no-such-signal'" in capsys.readouterr().err


def test_register_adds_the_three_verbs():
    import argparse

    parser = argparse.ArgumentParser(prog="rllc")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    args = parser.parse_args(["report", "RUN", "--cluster-key", "llc@code", "--compare-key", "induction",
                              "--log-time", "--k", "3"])
    assert args.func is cli.cmd_report and args.cluster_keys == ["llc@code"] and args.k == 3
    assert parser.parse_args(["compare", "RUN"]).func is cli.cmd_compare
    with pytest.raises(SystemExit):
        parser.parse_args(["cluster", "RUN", "--algorithms", "kmeans,spectral"])


def chromium(*args, user_dir):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={user_dir}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    page = report
    n_images = page.read_text().count("<img ")
    dom = chromium("--dump-dom", page.as_uri(), user_dir=tmp_path / "profile1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", dom.stdout).group(1)
    assert title == f"rllc report: ok {n_images}/{n_images}", title  # script ran, no error, every image decoded
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr
    shot = tmp_path / "shot.png"
    run = chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri(), user_dir=tmp_path / "profile2")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    img = mpimg.imread(shot)
    assert img.shape[:2] == (2400, 1280)
    assert float(img[..., :3].std()) > 0.05  # not a blank page
    assert "Uncaught" not in run.stderr and "CONSOLE" not in run.stderr
    assert 0.3 < float(img[..., :3].mean()) < 0.99  # neither black nor white


def test_report_opens_with_the_findings(report):
    """`rllc report` computes the study findings and puts them first, with status badges."""
    text = report.read_text()
    assert text.index('id="findings"') < text.index('id="run"')
    for title in ("Head formation", "ICL score drop", "Clustering vs head types", "Data refinement",
                  "LLC critical points vs head formation", "Wall time"):
        assert title in text
    assert '<span class="badge pass">PASS</span>' in text and '<span class="badge missing">missing</span>' in text
    assert (report.parent / "findings.json").is_file()
    # the clustering finding's curves, coloured by behavioural type, one figure per clustered key
    figures = sorted(report.parent.glob("findings_curves_*.png"))
    assert figures and "the clustering used, coloured by behavioural type" in text
