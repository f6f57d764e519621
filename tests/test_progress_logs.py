"""Progress in logs: plain lines every --progress_every when stdout is not a terminal, a bar on one;
no grappler "remapper failed" error lines while training on CPU."""

import io

import pytest

from erl_derain import progress
from erl_derain.progress import Progress, ProgressError, format_duration, parse_every

from .conftest import TINY_FLAGS, make_folder_dataset


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_parse_every():
    assert parse_every("30s") == ("seconds", 30.0)
    assert parse_every("1.5s") == ("seconds", 1.5)
    assert parse_every("200") == ("units", 200)
    assert parse_every(" 7 ") == ("units", 7)
    for bad in ("", "abc", "0", "0s", "-5", "2.5", "10m"):
        with pytest.raises(ProgressError, match="--progress_every"):
            parse_every(bad)


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(525) == "8:45"
    assert format_duration(3723) == "1:02:03"
    assert format_duration(None) == "?" and format_duration(float("inf")) == "?"


def _run(every, mode="auto", stream=None, steps=100, dt=1.0):
    clock, out = Clock(), stream if stream is not None else io.StringIO()
    p = Progress(steps, every=every, stream=out, mode=mode, clock=clock, prefix="  I ")
    for step in range(1, steps + 1):
        clock.t += dt
        p.update(step, {"loss": float(step), "lr": 1e-4 * step})
    p.close()
    return p, out.getvalue()


def test_lines_every_30_seconds_when_not_a_terminal():
    p, text = _run("30s")  # one step per second: lines at 30, 60, 90 s and the last step
    lines = text.splitlines()
    assert "\r" not in text and p.mode == "lines"
    assert [line.split(" (")[0] for line in lines] == [f"  I step {n:>3}/100" for n in (31, 61, 91, 100)]
    # The rate is counted from the first update (1 step/s); time left = remaining / rate.
    assert "1.00 steps/s, 1:09 left" in lines[0]
    # Losses: the mean since the previous line (steps 2..31 -> mean of 1..31 at the first line);
    # the learning rate: its last value.
    assert "loss: 16.0000" in lines[0] and "lr: 0.0031" in lines[0]
    assert "loss: 46.5000" in lines[1]  # mean of 32..61
    assert lines[-1].endswith("lr: 0.0100") and "(100%)" in lines[-1] and "0:00 left" in lines[-1]


def test_lines_every_n_steps():
    _, text = _run("25")
    assert [line.split(" (")[0] for line in text.splitlines()] == [f"  I step {n:>3}/100" for n in (25, 50, 75, 100)]


def test_bar_on_a_terminal_redraws_in_place_and_is_throttled():
    p, text = _run("30s", stream=FakeTerminal(), steps=50, dt=0.04)  # 25 updates per second
    assert p.mode == "bar" and text.endswith("\n") and text.count("\n") == 1
    draws = text.count("\r")
    # at most one redraw per REDRAW_SECONDS (0.1 s) of the 2 s, plus the last one
    assert 10 <= draws <= 2.0 / progress.REDRAW_SECONDS + 2
    last = text.split("\r")[-1]
    assert last.startswith("  I 50/50 [====================] 100%") and "25.00 steps/s" in last


def test_slow_units_show_seconds_per_unit():
    _, text = _run("1", steps=3, dt=20.0)
    assert "20.0 s/steps" not in text and "20.0 s/step" in text


@pytest.fixture
def tiny_run(tmp_path):
    return make_folder_dataset(tmp_path / "data", n=2, size=(24, 24)), tmp_path / "run"


def _cli_fd(capfd, *args):
    """``erl-derain <args>`` in this process, stdout and stderr captured at the file descriptors (the
    C++ log lines of TensorFlow included): (exit code, stdout, stderr)."""
    from absl import flags

    from erl_derain import cli

    capfd.readouterr()
    flags.FLAGS.unparse_flags()
    try:
        code = cli.main(flags.FLAGS(["erl-derain", *args]))
    finally:
        flags.FLAGS.unparse_flags()
    captured = capfd.readouterr()
    return code or 0, captured.out, captured.err


def test_training_log_to_a_file_is_plain_lines_without_remapper_errors(capfd, tiny_run):
    """In-process (pytest's captured stdout is not a terminal): every 3 steps one line, no carriage
    return; on CPU the C++ stderr holds no grappler 'remapper failed' line (it did before: one per
    traced step, see training.cpu_training_graph_options)."""
    data, model_dir = tiny_run
    code, out, err = _cli_fd(capfd, "train", f"--model_dir={model_dir}", f"--dataset=folder:{data}", "--crop_size=16",
                             "--batch_size=2", "--jit_compile=false", "--noevaluate_after", *TINY_FLAGS,
                             "--erl_schedule=ma_d", "--stage_steps=7,3,3", "--progress_every=3")
    assert code == 0, err
    assert "\r" not in out
    steps = [line.strip().split(" (")[0] for line in out.splitlines() if " step " in line]
    assert steps == ["I step 3/7", "I step 6/7", "I step 7/7", "II step 3/3", "III step 3/3"]
    assert "remapper failed" not in err


def test_bad_progress_every_is_refused_before_training(run_cli, tiny_run):
    data, model_dir = tiny_run
    code, out, err = run_cli("train", f"--model_dir={model_dir}", f"--dataset=folder:{data}", "--crop_size=16",
                             "--batch_size=2", "--jit_compile=false", "--noevaluate_after", *TINY_FLAGS,
                             "--stage_steps=1,1,1", "--progress_every=soon")
    assert code == 2 and "--progress_every='soon'" in err
    assert not (model_dir / "checkpoints").exists()
