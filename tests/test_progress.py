"""Progress fit for logs: off a terminal, plain lines every few seconds, never carriage-return redraws."""

import io
import subprocess
import sys
import time

import pytest
from tqdm.auto import tqdm

from rllc.cli import main
from rllc.progress import LOG_EVERY_S, LineProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_and_a_log_gets_lines():
    assert isinstance(progress_bar(total=3, file=Terminal()), tqdm)
    log = io.StringIO()
    bar = progress_bar(total=3, desc="work", unit="task", file=log)
    assert isinstance(bar, LineProgress)
    for _ in range(3):
        bar.update(1)
    bar.close()
    bar.close()  # a second close adds nothing
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines == ["work: 0/3 task (0%), 00:00 elapsed", "work: 3/3 task (100%), 00:00 elapsed"]


def test_lines_come_at_most_every_few_seconds_and_at_each_item_when_slower():
    log = io.StringIO()
    for _ in progress_bar(range(50), desc="fast", file=log):  # faster than every_s: first and last line only
        pass
    assert log.getvalue().count("\n") == 2 and "50/50" in log.getvalue()
    log = io.StringIO()
    bar = progress_bar(total=4, initial=1, desc="slow", unit="task", file=log, every_s=0.01)
    for _ in range(3):
        time.sleep(0.02)
        bar.update(1)
        bar.set_postfix(loss="1.23")
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 5 and lines[1].startswith("slow: 2/4 task (50%)") and "left" in lines[1]
    assert lines[-1].endswith("loss=1.23")


def test_rllc_train_and_estimate_print_log_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    start = time.monotonic()
    assert main(["train", "--preset", "tiny", "--steps", "60", "--max-chars", "30000", "--schedule", "linear:2",
                 "--out", str(tmp_path / "ckpt")]) == 0
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) <= 3 + elapsed / LOG_EVERY_S, err
    assert lines[0].startswith("train ckpt: 0/60 step (0%)") and lines[-1].startswith("train ckpt: 60/60 step (100%)")

    start = time.monotonic()
    assert main(["estimate", str(tmp_path / "ckpt"), "--out", str(tmp_path / "run"), "--datasets", "random",
                 "--estimators", "hessian-trace", "--probes", "6", "--curvature-batches", "1", "--batch-size", "2",
                 "--components", "0:0", "--threads", "1"]) == 0
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if line.startswith("rllc estimate:")]
    assert "\r" not in err and 2 <= len(progress) <= 3 + elapsed / LOG_EVERY_S, err
    assert progress[-1].startswith("rllc estimate: 3/3 task (100%)")


@pytest.mark.slow
def test_a_redirected_training_log_has_no_carriage_returns(tmp_path):
    """The issue's case (`make demo > log`): stderr to a file, a real process."""
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "rllc.cli", "train", "--preset", "tiny", "--steps", "40",
                               "--max-chars", "30000", "--schedule", "linear:1", "--out", str(tmp_path / "ckpt")],
                              stderr=f, stdout=subprocess.DEVNULL, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and text.count("\n") <= 12 and "40/40 step (100%)" in text, text
