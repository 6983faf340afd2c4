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


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "rllc.cli", "--help"], capture_output=True, text=True).stdout
    assert "train" in out and "info" in out
