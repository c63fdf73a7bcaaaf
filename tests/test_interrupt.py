"""SIGTERM (a batch system's wall-time limit, ``kill``) stops ``fe2nn solve``/``train`` cleanly: after the
load step or epoch in progress, with the checkpoint written and the output closed, one line on
stderr and exit status 143; ``--resume`` then ends with the results of a run never interrupted --
on 1 and 2 ranks, also when only one rank receives the signal."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, mpirun_cmd, run_cli
from test_fe2_util import bar_config, needs_surrogate, rno_table
from test_macro_checkpoint import _assert_same_results, _j2_bar, _rows
from test_rno_train import _config, dataset  # noqa: F401 - the dataset fixture

from fe2nn import interrupt
from fe2nn.cli import main as cli_main
from fe2nn.surrogate import train as tr
from fe2nn.surrogate.card import sha256_file

#: runs fe2nn; rank R sends itself SIGTERM once step K of the S-th solve has converged (after the
#: output of that step; fe2nn validate runs the surrogate's solve, then the reference's)
SIGNALLER = """
import os, signal, sys
import fe2nn.fe2 as f
K, R, S, call = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), f.OODMonitor.__call__
seen = [0]
def signalling_call(self, solver, rec):
    call(self, solver, rec)
    if rec.step == K:
        seen[0] += 1
        if seen[0] == S and solver.comm.rank == R:
            os.kill(os.getpid(), signal.SIGTERM)
f.OODMonitor.__call__ = signalling_call
from fe2nn.cli import main
raise SystemExit(main(sys.argv[4:]))
"""


def _signalled(tmp_path, cfg, step: int, n: int = 1, rank: int = 0, command: str = "solve", solve: int = 1):
    script = tmp_path / "signaller.py"
    script.write_text(SIGNALLER)
    base = [sys.executable, str(script), str(step), str(rank), str(solve), command, str(cfg), "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(mpirun_cmd(n, *base) if n > 1 else base, cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


def _one_line(proc) -> str:
    line = proc.stderr.strip()
    assert proc.returncode == 143 and "\n" not in line and "Traceback" not in line, (proc.returncode, proc.stderr)
    return line


def test_graceful_stop_records_the_signal_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    assert interrupt.requested() is None and not interrupt.active()
    with interrupt.graceful_stop():
        assert interrupt.active() and interrupt.requested() is None
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, the process goes on
        assert interrupt.requested() == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before and interrupt.requested() is None


@pytest.mark.parametrize("n, rank", [(1, 0), (2, 1)])
def test_solve_stops_after_the_step_writes_its_checkpoint_and_resumes(tmp_path, n, rank):
    """Checkpoints every 2 steps; the signal after step 3 (one rank only on 2 ranks): every rank stops
    after step 3, the checkpoint is of step 3, steps.csv has 3 rows, and --resume ends as the
    uninterrupted run (steps.csv, strain paths and VTX data byte for byte)."""
    ref, res = tmp_path / "ref", tmp_path / "res"
    run_cli("solve", str(_j2_bar(tmp_path / "ref.toml", ref, every=2)), "-q", n=n, check=True)
    cfg = _j2_bar(tmp_path / "res.toml", res, every=2)
    line = _one_line(_signalled(tmp_path, cfg, step=3, n=n, rank=rank))
    rows = _rows(res)
    assert len(rows) == 3  # the output of the converged steps is written and closed
    t = f"t = {float(rows[-1]['time']):.6g} s"  # after a cut-back, which depends on the partition
    assert line.startswith(f"fe2nn: stopped by SIGTERM after step 3 ({t}, load factor"), line
    assert f"the checkpoint of step 3 is in {res / 'checkpoint'}: continue with --resume" in line, line
    assert json.loads((res / "checkpoint" / "meta.json").read_text())["step"] == 3
    proc = run_cli("solve", str(cfg), "--resume", n=n, check=True)
    assert f"resuming after step 3 at {t}" in proc.stdout
    _assert_same_results(ref, res)


def test_solve_without_checkpoints_says_it_cannot_be_resumed(tmp_path):
    res = tmp_path / "res"
    line = _one_line(_signalled(tmp_path, _j2_bar(tmp_path / "res.toml", res, every=0), step=2))
    assert "after step 2" in line and "no checkpoint was written" in line and "cannot be resumed" in line
    assert len(_rows(res)) == 2 and not (res / "checkpoint").exists()


def test_a_signal_in_the_last_step_lets_the_run_finish(tmp_path):
    ref, res = tmp_path / "ref", tmp_path / "res"
    run_cli("solve", str(_j2_bar(tmp_path / "ref.toml", ref, every=2)), "-q", check=True)
    last = len(_rows(ref))
    proc = _signalled(tmp_path, _j2_bar(tmp_path / "res.toml", res, every=2), step=last)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    _assert_same_results(ref, res)  # complete, and no checkpoint left


@needs_surrogate
def test_validate_stops_in_its_reference_solve_and_resumes(tmp_path):
    """SIGTERM in the reference (Taylor FE²) solve of fe2nn validate, between two checkpoints: no
    report, the reference's checkpoint of that step; --resume gives the uninterrupted report."""
    kw = dict(strain=4e-3, times=(0.0, 2.0, 2.5), factors=(0.0, 1.0, 0.75), steps=6)
    extra = "checkpoint_every = 2\n[validate]\nstress_steps = [2, 6]\n"
    run_cli("validate", str(bar_config(tmp_path / "a.toml", rno_table(), out=str(tmp_path / "a"), extra=extra,
                                       **kw)), "-q", check=True)
    cfg = bar_config(tmp_path / "b.toml", rno_table(), out=str(tmp_path / "b"), extra=extra, **kw)
    line = _one_line(_signalled(tmp_path, cfg, step=3, command="validate", solve=2))
    assert "after step 3" in line and f"the checkpoint of step 3 is in {tmp_path / 'b' / 'reference' / 'checkpoint'}" in line
    assert not (tmp_path / "b" / "report.json").exists()
    stopped = json.loads((tmp_path / "b" / "reference" / "run.json").read_text())
    assert stopped["validate_run"] == "reference" and not stopped["finished"] and "after step 3" in stopped["stopped"]
    assert json.loads((tmp_path / "b" / "surrogate" / "run.json").read_text())["finished"]
    proc = run_cli("validate", str(cfg), "--resume", check=True)
    assert "resuming after step 3" in proc.stdout
    resumed = json.loads((tmp_path / "b" / "reference" / "run.json").read_text())
    whole = json.loads((tmp_path / "a" / "reference" / "run.json").read_text())
    assert resumed["finished"] and resumed["resumed"] and not whole["resumed"] and resumed["steps"] == whole["steps"]
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("a", "b"))
    assert b["comparison"] == a["comparison"] and b["iterations"] == a["iterations"]
    # in the surrogate's solve (the first), which writes no checkpoint: nothing to resume from
    line = _one_line(_signalled(tmp_path, cfg, step=2, command="validate", solve=1))
    assert "after step 2" in line and "cannot be resumed" in line


def test_sigterm_to_mpirun_stops_both_ranks_and_the_run_resumes(tmp_path):
    """A real signal from outside, to mpirun (which forwards it to the ranks), at whatever step the
    run is in: the run stops with its checkpoint and resumes to the uninterrupted results."""
    ref, res = tmp_path / "ref", tmp_path / "res"

    def config(path, out):  # 120 steps: long enough for the signal to arrive mid-run
        p = _j2_bar(path, out, every=1, max_iterations=25)
        p.write_text(p.read_text().replace("steps = 6", "steps = 120"))
        return p

    run_cli("solve", str(config(tmp_path / "ref.toml", ref)), "-q", n=2, check=True)
    cfg = config(tmp_path / "res.toml", res)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(mpirun_cmd(2, sys.executable, "-m", "fe2nn", "solve", str(cfg)), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for text in proc.stdout:  # the first converged step: the loop is running
        if text.startswith("step    1"):
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    if proc.returncode == 0:  # the run was faster than the signal: nothing to resume
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 143, (proc.returncode, err)
    assert "fe2nn: stopped by SIGTERM after step" in err and "Traceback" not in err, err
    step = json.loads((res / "checkpoint" / "meta.json").read_text())["step"]
    assert len(_rows(res)) == step
    run_cli("solve", str(cfg), "--resume", "-q", n=2, check=True)
    _assert_same_results(ref, res)


def test_train_stops_after_the_epoch_and_resumes_exactly(tmp_path, dataset, monkeypatch, capsys):  # noqa: F811
    a, b = _config(tmp_path, dataset, "a", epochs=8), _config(tmp_path, dataset, "b", epochs=8)
    assert tr.main([str(a), "--no-progress"]) == 0
    epoch = tr.Trainer.train_epoch

    def signalling_epoch(self):
        loss = epoch(self)
        if self.epoch == 2:  # the third epoch (0-based count before it ends)
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(tr.Trainer, "train_epoch", signalling_epoch)
    assert cli_main(["train", str(b), "--no-progress"]) == 143
    line = capsys.readouterr().err.strip()
    assert line == (f"fe2nn: stopped by SIGTERM after epoch 3 of 8 (k = 2); the checkpoint is "
                    f"{tmp_path / 'b' / 'checkpoint.pt'}: continue with --resume"), line
    assert not (tmp_path / "b" / "weights.safetensors").exists()
    monkeypatch.setattr(tr.Trainer, "train_epoch", epoch)
    assert cli_main(["train", str(b), "--no-progress", "--resume"]) == 0
    assert sha256_file(tmp_path / "b" / "weights.safetensors") == sha256_file(tmp_path / "a" / "weights.safetensors")
    assert (json.loads((tmp_path / "b" / "history.json").read_text())
            == json.loads((tmp_path / "a" / "history.json").read_text()))
