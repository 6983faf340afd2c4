import pytest
import subprocess
import sys

import torch

from rllc.cli import main
from rllc.train import preset, train


def test_info_describes_a_run(tmp_path, capsys):
    train(preset("tiny", n_steps=20, max_chars=60_000, schedule="linear:2"), tmp_path, progress=False)
    (tmp_path / "step_00000015.safetensors.tmp").write_bytes(b"partial")
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "format        rllc" in out
    assert "2 layers x 4 heads, d_model 32" in out and "shortformer" in out
    assert "steps         3: 0, 10, 20" in out
    assert "unfinished write" in out  # the leftover temp file is reported, not loaded


def test_info_check_fails_on_a_corrupt_checkpoint(tmp_path, capsys):
    train(preset("tiny", n_steps=10, max_chars=60_000, schedule="linear:1"), tmp_path, progress=False)
    path = tmp_path / "step_00000010.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    assert main(["info", str(tmp_path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "step_00000010.safetensors" in out and "unreadable" in out


def test_errors_are_one_line_naming_the_path(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rllc info: error:") and "nope: no such directory" in err
    torch.save({"a": torch.zeros(1)}, tmp_path / "w_1.pt")
    assert main(["info", str(tmp_path)]) == 2
    assert "no config" in capsys.readouterr().err


@pytest.mark.slow
def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "rllc.cli", "--help"], capture_output=True, text=True).stdout
    assert all(verb in out for verb in ("train", "info", "estimate", "probe", "export"))


def test_series_verbs_document_every_option():
    from rllc.cli import build_parser
    from rllc.runs.options import ESTIMATE_DEFAULTS, PROBE_DEFAULTS

    verbs = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "info", "estimate", "probe", "export"} <= set(verbs)
    for verb, defaults in (("estimate", ESTIMATE_DEFAULTS), ("probe", PROBE_DEFAULTS)):
        text = verbs[verb].format_help()
        for option in defaults:
            assert f"--{option.replace('_', '-')}" in text, (verb, option)
        assert "--config" in text and "--out" in text
    assert "--format" in verbs["export"].format_help()


def test_toml_options_are_overridden_by_flags(tmp_path):
    from rllc.cli import build_parser, series_options
    from rllc.runs.options import ESTIMATE_DEFAULTS, RunError, merge_options

    cfg = tmp_path / "run.toml"
    cfg.write_text('draws = 50\nchains = 3\ndatasets = ["prose", "code"]\nburn-in = 4\n')
    args = build_parser().parse_args(["estimate", "ckpts", "--config", str(cfg), "--draws", "20", "--paired"])
    opts = merge_options(ESTIMATE_DEFAULTS, series_options(args, ESTIMATE_DEFAULTS))
    assert (opts["draws"], opts["chains"], opts["burn_in"], opts["paired"]) == (20, 3, 4, True)
    assert opts["datasets"] == ["prose", "code"] and opts["epsilon"] == ESTIMATE_DEFAULTS["epsilon"]
    args = build_parser().parse_args(["estimate", "ckpts", "--components", "heads, 1:6+1:7"])
    assert merge_options(ESTIMATE_DEFAULTS, series_options(args, ESTIMATE_DEFAULTS))["components"] == \
        ["heads", "1:6+1:7"]
    cfg.write_text("draws = [\n")
    try:
        series_options(build_parser().parse_args(["estimate", "ckpts", "--config", str(cfg)]), ESTIMATE_DEFAULTS)
    except RunError as e:
        assert "run.toml: cannot read the TOML config" in str(e)
    else:
        raise AssertionError("a broken TOML file was accepted")
