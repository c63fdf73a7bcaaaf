"""``fe2nn solve --resume``: a run killed after a checkpoint and resumed ends with the same results
as a run that was never interrupted -- steps.csv, strain_paths.h5 and the VTX data byte for byte --
on 1 and 2 ranks, through cut-backs (the adaptive step size is part of the checkpoint) and with the
surrogate's internal variables as history; a checkpoint that does not fit the run is refused with
one line before anything is written."""
from __future__ import annotations

import csv
import json
import sys

import h5py
import numpy as np
import pytest

from conftest import REPO, mpirun_cmd, run_cli
from test_fe2_util import bar_config, needs_surrogate, rno_table

#: runs fe2nn and dies (os._exit, as under SIGKILL: no clean-up) right after the checkpoint of step K
KILLER = """
import os, sys
import fe2nn.macro.checkpoint as c
K, save = int(sys.argv[1]), c.Checkpoint.save
def killing_save(self, solver, records, loop, parts):
    save(self, solver, records, loop, parts)
    if len(records) >= K:
        os._exit(9)
c.Checkpoint.save = killing_save
from fe2nn.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def _j2_bar(path, out, every=1, max_iterations=2, E="200e9", solver="", clamped=False, degree=1, mesh="bar.msh"):
    """The J2 bar demo in 6 steps with at most 2 Newton iterations per step: a cut-back at t = 1.5 s.
    ``solver``: more lines of its [solver] table; ``clamped``: the end x = 0 held in all directions
    (fields that vary from cell to cell); ``degree``: the displacement's Lagrange degree; ``mesh``: in meshes/."""
    text = (REPO / "demos" / "bar_j2.toml").read_text()
    if clamped:
        text = text.replace('boundary = "xmin"\nx = 0.0', 'boundary = "xmin"\nx = 0.0\ny = 0.0\nz = 0.0')
    text = text.replace("degree = 1", f"degree = {degree}")
    text = text.replace('"../meshes/bar.msh"', f'"{REPO / "meshes" / mesh}"').replace("steps = 30", "steps = 6")
    text = text.replace("E = 200e9", f"E = {E}")
    text = text.replace('linear_solver = "direct"', f'linear_solver = "direct"\nmax_iterations = {max_iterations}\n{solver}')
    text = text.replace('dir = "../results/bar_j2"', f'dir = "{out}"\ncheckpoint_every = {every}\nstrain_paths = true')
    path.write_text(text)
    return path


def _killed(tmp_path, cfg, after: int, n: int = 1, command: str = "solve", extra: tuple = ()):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    import os
    import subprocess

    base = [sys.executable, str(script), str(after), command, str(cfg), "-q", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(mpirun_cmd(n, *base) if n > 1 else base, cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 9, proc.stdout + proc.stderr


def _rows(out):
    with open(out / "steps.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r.pop("wall_time")
    return rows


def _assert_same_results(ref, res):
    assert _rows(res) == _rows(ref)  # every column as written (17 digits), but the wall time
    with h5py.File(ref / "strain_paths.h5") as a, h5py.File(res / "strain_paths.h5") as b:
        for key in ("strain", "time", "x", "cell", "point"):
            np.testing.assert_array_equal(b[key][()], a[key][()])
    for name in ("displacement.bp", "fields.bp"):  # every frame's data and step metadata
        for part in ("data.0", "md.0"):
            assert (res / name / part).read_bytes() == (ref / name / part).read_bytes(), f"{name}/{part}"
    assert sorted(p.name for p in res.iterdir()) == sorted(p.name for p in ref.iterdir())  # no checkpoint left


def test_resume_after_kill_through_a_cut_back_gives_the_uninterrupted_results(tmp_path):
    ref, res = tmp_path / "ref", tmp_path / "res"
    proc = run_cli("solve", str(_j2_bar(tmp_path / "ref.toml", ref)), check=True)
    assert "cut back at t = 1.5 s" in proc.stdout and "step    7" in proc.stdout
    cfg = _j2_bar(tmp_path / "res.toml", res)
    _killed(tmp_path, cfg, after=3)  # between the cut-back and the step that reaches t = 1.5 s
    assert (res / "checkpoint" / "meta.json").is_file() and not (res / "displacement.bp").exists()
    proc = run_cli("solve", str(cfg), "--resume", check=True)
    assert "resuming after step 3 at t = 1.25 s" in proc.stdout
    assert "step    4  t = 1.5 s" in proc.stdout and "step    3 " not in proc.stdout
    _assert_same_results(ref, res)


def test_a_failed_run_resumes_with_other_solver_settings(tmp_path):
    ref, res = tmp_path / "ref", tmp_path / "res"
    run_cli("solve", str(_j2_bar(tmp_path / "ref.toml", ref)), "-q", check=True)
    strict = _j2_bar(tmp_path / "strict.toml", res, solver="min_dt = 0.4")  # no cut-back to 0.25 s allowed
    proc = run_cli("solve", str(strict), "-q")
    line = proc.stderr.strip()
    assert proc.returncode == 3 and "\n" not in line and "Traceback" not in line, proc.stderr
    assert "min_dt = 0.4" in line and "the checkpoint of step 2 is in" in line and "--resume" in line
    rec = json.loads((res / "run.json").read_text())  # the record says how the run ended
    assert not rec["finished"] and "min_dt = 0.4" in rec["stopped"] and rec["config"]["solver"]["min_dt"] == 0.4
    run_cli("solve", str(_j2_bar(tmp_path / "res.toml", res)), "--resume", "-q", check=True)
    _assert_same_results(ref, res)


@needs_surrogate
def test_resume_with_the_surrogate_restores_its_internal_variables(tmp_path):
    kw = dict(strain=4e-3, times=(0.0, 2.0, 3.0), factors=(0.0, 1.0, 0.5), steps=6)
    ref, res = tmp_path / "ref", tmp_path / "res"
    extra = "checkpoint_every = 2\nstrain_paths = true"
    run_cli("solve", str(bar_config(tmp_path / "ref.toml", rno_table(), out=str(ref), extra=extra, **kw)), "-q",
            check=True)
    cfg = bar_config(tmp_path / "res.toml", rno_table(), out=str(res), extra=extra, **kw)
    _killed(tmp_path, cfg, after=4)  # past the peak: the unloading depends on the history
    run_cli("solve", str(cfg), "--resume", "-q", check=True)
    _assert_same_results(ref, res)
    assert "ood_points" in _rows(res)[0]


def test_set_changes_a_key_as_an_edited_file_would_and_resume_needs_the_same_set(tmp_path):
    """``--set material.E=210e9`` on the 200 GPa bar = the file with 210 GPa, through a kill and a
    resume; resuming without the ``--set`` is another problem (the checkpoint sees the changed config)."""
    ref, res = tmp_path / "ref", tmp_path / "res"
    run_cli("solve", str(_j2_bar(tmp_path / "ref.toml", ref, E="210e9")), "-q", check=True)
    cfg = _j2_bar(tmp_path / "res.toml", res)
    _killed(tmp_path, cfg, after=3, extra=("--set", "material.E=210e9"))
    proc = run_cli("solve", str(cfg), "--resume", "-q")
    assert proc.returncode == 2 and "another problem" in proc.stderr and "material.E" in proc.stderr, proc.stderr
    run_cli("solve", str(cfg), "--resume", "-q", "--set", "material.E=210e9", check=True)
    _assert_same_results(ref, res)
    rec = json.loads((res / "run.json").read_text())  # what was run, --set included
    assert rec["overrides"] == ["material.E=210e9"] and rec["config"]["material"]["E"] == 210e9
    assert rec["command"].endswith("--resume -q --set material.E=210e9") and rec["resumed"] and rec["finished"]
    assert rec["steps"] == len(_rows(res)) and len(rec["mesh_sha256"]) == 64 and rec["fe2nn_version"]
    # fe2nn inspect <output dir>: the record and a digest of steps.csv
    text = run_cli("inspect", str(res), check=True).stdout
    assert text.startswith(f"solve results {res}") and "--set material.E=210e9" in text and "(finished, " in text
    s = json.loads(run_cli("inspect", str(res), "--json", check=True).stdout)
    R = np.array([[float(r[f"reaction_{c}"]) for c in "xyz"] for r in _rows(res)])
    assert s["steps"] == len(R) and s["largest_reaction"]["norm"] == pytest.approx(np.linalg.norm(R, axis=1).max())
    assert s["newton_iterations"]["total"] == sum(int(r["iterations"]) for r in _rows(res))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "steps.csv").write_text("not,a\ntable,1\n")
    proc = run_cli("inspect", str(tmp_path / "junk"))
    assert proc.returncode == 2 and "steps.csv: not a steps table" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_on_two_ranks_and_refusals(tmp_path):
    ref, res = tmp_path / "ref", tmp_path / "res"
    run_cli("solve", str(_j2_bar(tmp_path / "ref.toml", ref, every=2)), "-q", n=2, check=True)
    cfg = _j2_bar(tmp_path / "res.toml", res, every=2)
    _killed(tmp_path, cfg, after=4, n=2)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in res.rglob("*"))

    def refused(proc, *words):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        line = proc.stderr.strip()
        assert "\n" not in line and all(w in line for w in words), line
        assert sorted((p.name, p.stat().st_mtime_ns) for p in res.rglob("*")) == before  # nothing written

    changed = _j2_bar(tmp_path / "changed.toml", res, every=2, E="210e9")
    refused(run_cli("solve", str(changed), "--resume", n=2), "another problem", "material.E")
    refused(run_cli("solve", str(cfg), "--resume", "-o", str(tmp_path / "elsewhere"), n=2),
            "no checkpoint to resume from", "checkpoint_every")
    run_cli("solve", str(cfg), "--resume", "-q", n=2, check=True)
    _assert_same_results(ref, res)
    # [solver] may change on resume (e.g. more Newton iterations for a run that failed)
    _killed(tmp_path, cfg, after=2, n=2)
    looser = _j2_bar(tmp_path / "looser.toml", res, every=2, max_iterations=25)
    proc = run_cli("solve", str(looser), "--resume", n=2, check=True)
    assert "resuming after step 2" in proc.stdout and "cut back" not in proc.stdout


def test_checkpoint_every_is_validated(tmp_path):
    cfg = _j2_bar(tmp_path / "bad.toml", tmp_path / "out", every=-1)
    proc = run_cli("solve", str(cfg))
    assert proc.returncode == 2 and "checkpoint_every" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("every", [0, 3])
def test_a_finished_run_leaves_no_checkpoint(tmp_path, every):
    out = tmp_path / "out"
    run_cli("solve", str(_j2_bar(tmp_path / "c.toml", out, every=every)), "-q", check=True)
    assert not any(p.name.startswith((".checkpoint", "checkpoint", ".vtx")) for p in out.iterdir())


@needs_surrogate
def test_validate_resumes_its_reference_solve(tmp_path):
    import json

    kw = dict(strain=4e-3, times=(0.0, 2.0, 2.5), factors=(0.0, 1.0, 0.75), steps=6)
    extra = "checkpoint_every = 2\n[validate]\nstress_steps = [2, 6]\n"  # reference: the Taylor RVE
    run_cli("validate", str(bar_config(tmp_path / "a.toml", rno_table(), out=str(tmp_path / "a"), extra=extra,
                                       **kw)), "-q", check=True)
    cfg = bar_config(tmp_path / "b.toml", rno_table(), out=str(tmp_path / "b"), extra=extra, **kw)
    _killed(tmp_path, cfg, after=4, command="validate")  # only the reference solve checkpoints
    assert (tmp_path / "b" / "reference" / "checkpoint" / "meta.json").is_file()
    assert not (tmp_path / "b" / "report.json").exists()
    proc = run_cli("validate", str(cfg), "--resume", check=True)
    assert "resuming after step 4" in proc.stdout
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("a", "b"))
    assert b["comparison"] == a["comparison"] and b["iterations"] == a["iterations"] and b["ood"] == a["ood"]
    assert b["timing"]["reference"]["resumed_after_step"] == 4 and a["timing"]["reference"]["resumed_after_step"] is None
    assert "resumed from its checkpoint after step 4" in (tmp_path / "b" / "report.md").read_text()
    assert _rows(tmp_path / "b" / "reference") == _rows(tmp_path / "a" / "reference")
    assert not (tmp_path / "b" / "reference" / "checkpoint").exists()
    proc = run_cli("validate", str(cfg), "--resume")
    assert proc.returncode == 2 and "no checkpoint to resume from" in proc.stderr


@needs_surrogate
def test_validate_resumes_on_another_number_of_ranks(tmp_path):
    """The reference solve (Taylor RVE) killed on 1 rank and resumed on 2: its internal state, the
    stress fields recorded before the kill and the OOD counts move onto the 2-rank partition, and
    the report agrees with the uninterrupted 1-rank run to round-off."""
    import json

    kw = dict(strain=4e-3, times=(0.0, 2.0, 2.5), factors=(0.0, 1.0, 0.75), steps=6)
    extra = "checkpoint_every = 2\n[validate]\nstress_steps = [2, 6]\n"
    run_cli("validate", str(bar_config(tmp_path / "a.toml", rno_table(), out=str(tmp_path / "a"), extra=extra,
                                       **kw)), "-q", check=True)
    cfg = bar_config(tmp_path / "b.toml", rno_table(), out=str(tmp_path / "b"), extra=extra, **kw)
    _killed(tmp_path, cfg, after=4, command="validate")
    proc = run_cli("validate", str(cfg), "--resume", n=2, check=True)
    assert "resuming after step 4" in proc.stdout and "(written on 1 rank(s), moved onto 2)" in proc.stdout
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("a", "b"))
    assert b["ood"] == a["ood"] and b["iterations"] == a["iterations"]

    def numbers(x, at=""):  # every number of the comparison, by its place
        if isinstance(x, dict):
            return {k: v for key, val in x.items() for k, v in numbers(val, f"{at}.{key}").items()}
        if isinstance(x, list):
            return {k: v for i, val in enumerate(x) for k, v in numbers(val, f"{at}[{i}]").items()}
        return {at: x} if isinstance(x, (int, float)) and not isinstance(x, bool) else {}

    na, nb = numbers(a["comparison"]), numbers(b["comparison"])
    assert sorted(nb) == sorted(na) and na
    for key, value in na.items():  # deviations of a few percent, to round-off of 1 against 2 ranks
        assert abs(nb[key] - value) <= 1e-7 * max(abs(value), 1e-3), (key, nb[key], value)


def test_a_checkpoint_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".checkpoint.tmp").write_text("in the way")  # the checkpoint's temporary directory cannot be made
    proc = run_cli("solve", str(_j2_bar(tmp_path / "c.toml", out, every=3)), "-q", check=True)
    assert "WARNING: checkpoint of step 3 not written (FileExistsError" in proc.stdout
    assert "no checkpoint yet" in proc.stdout and "step 6 not written" in proc.stdout
    assert len(_rows(out)) == 7 and not (out / "checkpoint").exists()


#: like KILLER, but the checkpoint of step F fails half-way (after its history was appended, when
#: publishing), and the sizes of the rank file, the history file and meta.json are logged after each
#: checkpoint
FLAKY = """
import os, sys
import fe2nn.macro.checkpoint as c
K, F, log, save, replace = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], c.Checkpoint.save, os.replace
def failing(*args):
    raise OSError(28, "No space left on device (simulated)")
def flaky_save(self, solver, records, loop, parts):
    os.replace = failing if len(records) == F else replace
    save(self, solver, records, loop, parts)
    os.replace = replace
    with open(log, "a") as fh:
        npz, hist, meta = self.dir / "rank0.npz", self._history_file(), self.dir / "meta.json"
        sizes = [p.stat().st_size if p.exists() else -1 for p in (npz, hist, meta)]
        fh.write(f"{len(records)} {self.last_step} {sizes[0]} {sizes[1]} {sizes[2]}\\n")
    if len(records) >= K:
        os._exit(9)
c.Checkpoint.save = flaky_save
from fe2nn.cli import main
raise SystemExit(main(sys.argv[4:]))
"""


def _flaky(tmp_path, cfg, after: int, fail: int):
    import subprocess

    (tmp_path / "flaky.py").write_text(FLAKY)
    log = tmp_path / "sizes.log"
    log.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(tmp_path / "flaky.py"), str(after), str(fail), str(log), "solve",
                           str(cfg), "-q"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 9, proc.stdout + proc.stderr
    return proc, [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


def test_checkpoints_append_the_new_frames_only_and_a_failed_one_is_cut_off(tmp_path):
    """Each checkpoint writes the state and meta.json (the same size at every step: the step records
    go to the history) and appends the steps since the previous one to the history file; a
    checkpoint that failed after appending (here: publishing failed) leaves bytes that the next one
    cuts off, and the resumed run is still exact."""
    ref, res = tmp_path / "ref", tmp_path / "res"
    run_cli("solve", str(_j2_bar(tmp_path / "ref.toml", ref)), "-q", check=True)
    cfg = _j2_bar(tmp_path / "res.toml", res)
    proc, rows = _flaky(tmp_path, cfg, after=4, fail=2)
    assert "WARNING: checkpoint of step 2 not written (OSError" in proc.stdout
    assert [r[:2] for r in rows] == [(1, 1), (2, 1), (3, 3), (4, 4)]  # step 2's checkpoint failed
    npz = {step: size for step, _, size, _, _ in rows if step != 2}
    assert len(set(npz.values())) == 1, npz  # the state only: no frames in the rank file
    meta = {step: size for step, _, _, _, size in rows if step != 2}
    hist_file, = (res / "checkpoint.history").glob("*.rank0.npys")
    from fe2nn.macro.checkpoint import LAYOUT, RECORDS, Checkpoint

    segments = list(Checkpoint._read_history(hist_file, hist_file.stat().st_size))
    names = [name for name, _ in segments]
    # the mesh partition once, first; then the records of step 1
    assert names[0] == LAYOUT and names.count(LAYOUT) == 1 and names[1] == RECORDS, names
    assert len(segments[1][1]["records"]) == 1
    record = len(json.dumps(segments[1][1]["records"][0]))  # one step record in JSON [bytes]
    assert max(meta.values()) - min(meta.values()) < record / 4, (meta, record)  # only digits differ
    hist = {step: size for step, _, _, size, _ in rows}
    one_step = hist[4] - hist[3]
    assert one_step > 0 and hist[2] > hist[1]  # step 2 appended its frame, then failed to publish
    assert abs((hist[3] - hist[1]) - 2 * one_step) < 0.05 * one_step  # steps 2 and 3 appended once each
    proc = run_cli("solve", str(cfg), "--resume", check=True)
    assert "resuming after step 4" in proc.stdout
    _assert_same_results(ref, res)


def test_a_truncated_history_is_refused_before_anything_is_written(tmp_path):
    res = tmp_path / "res"
    cfg = _j2_bar(tmp_path / "res.toml", res)
    _killed(tmp_path, cfg, after=3)
    # fe2nn inspect tells what the checkpoint holds, from the segments' headers
    s = json.loads(run_cli("inspect", str(res), "--json", check=True).stdout)
    assert s["step"] == 3 and s["n_ranks"] == 1 and s["resumable"] and s["material"] == "j2"
    assert s["state"] == ["backstress", "eps_p", "p"]
    assert s["history"] == {"step records": 3, "steps.csv rows": 3, "VTX frames": 4, "strain-path rows": 4,
                            "out-of-distribution counts": 3}
    hist, = (res / "checkpoint.history").glob("*.rank0.npys")
    hist.write_bytes(hist.read_bytes()[:-100])
    proc = run_cli("inspect", str(res / "checkpoint"), check=True)
    assert "after step 3" in proc.stdout and "NOT resumable" in proc.stdout and hist.name in proc.stdout
    before = sorted((p.name, p.stat().st_mtime_ns) for p in res.rglob("*"))
    proc = run_cli("solve", str(cfg), "--resume")
    line = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in line and "Traceback" not in line, proc.stderr
    assert "checkpoint.history" in line and "shorter than the checkpoint" in line, line
    assert sorted((p.name, p.stat().st_mtime_ns) for p in res.rglob("*")) == before


def test_a_new_run_over_a_checkpoint_keeps_it_until_its_own_is_written(tmp_path):
    """A run started afresh (no --resume) in the directory of a killed one writes history files of
    its own: when its first checkpoint fails half-way, the old checkpoint still resumes exactly; once
    its own is written, the old run's history files are gone."""
    ref, res = tmp_path / "ref", tmp_path / "res"
    run_cli("solve", str(_j2_bar(tmp_path / "ref.toml", ref)), "-q", check=True)
    cfg = _j2_bar(tmp_path / "res.toml", res)
    _killed(tmp_path, cfg, after=3)
    old = sorted(p.name for p in (res / "checkpoint.history").iterdir())
    proc, rows = _flaky(tmp_path, cfg, after=1, fail=1)  # afresh: its first checkpoint fails, then it dies
    assert "WARNING: checkpoint of step 1 not written" in proc.stdout and rows[0][1] == 0
    proc = run_cli("solve", str(cfg), "--resume", check=True)
    assert "resuming after step 3" in proc.stdout
    _assert_same_results(ref, res)
    _killed(tmp_path, cfg, after=3)
    _killed(tmp_path, cfg, after=2)  # afresh again, and its checkpoint of step 2 replaces that of step 3
    new = sorted(p.name for p in (res / "checkpoint.history").iterdir())
    assert len(new) == 1 and new != old
    assert "resuming after step 2" in run_cli("solve", str(cfg), "--resume", check=True).stdout
    _assert_same_results(ref, res)


#: runs fe2nn with every frame that goes into the VTX files recorded, keyed by place (the
#: displacement by dof coordinates, the cell fields by original cell index), into FRAMES.rank<r>.npz
FRAMES = """
import sys
import numpy as np
from mpi4py import MPI  # (before DOLFINx)
import fe2nn.macro.output as o
out, init, frames = sys.argv[1], o.OutputWriter.__init__, []
class Recorder:
    def __init__(self, owner, name, writer):
        self.owner, self.name, self.writer = owner, name, writer
    def write(self, t):
        self.writer.write(t)
        s = self.owner.solver
        mesh = s.qf.mesh
        if self.name == "displacement.bp":
            V = s.u.function_space
            n = V.dofmap.index_map.size_local
            frames.append(("u", t, V.tabulate_dof_coordinates()[:n], s.u.x.array.reshape(-1, 3)[:n]))
        else:
            n = mesh.topology.index_map(3).size_local
            cells = np.asarray(mesh.topology.original_cell_index[:n])
            for f in self.owner.cells.functions:
                dofs = f.function_space.dofmap.list[:n, 0]
                bs = f.function_space.dofmap.index_map_bs
                frames.append((f.name, t, cells, f.x.array.reshape(-1, bs)[dofs]))
    def close(self):
        self.writer.close()
        keys = [f"{k}|{t!r}" for k, t, _, _ in frames]
        np.savez(f"{out}.rank{MPI.COMM_WORLD.rank}.npz", keys=np.array(keys),
                 **{f"where{i}": w for i, (_, _, w, _) in enumerate(frames)},
                 **{f"value{i}": v for i, (_, _, _, v) in enumerate(frames)})
def recording_init(self, *args, **kw):
    init(self, *args, **kw)
    self.writers = [(name, Recorder(self, name, w)) for name, w in self.writers]
    if kw.get("initial_frame", True):  # the undeformed frame, written before the writers were wrapped
        frames.clear()
        for _, w in self.writers:
            w.writer.write = (lambda f: lambda t: None)(w.writer.write)  # (already written)
            w.write(0.0)
            del w.writer.write
o.OutputWriter.__init__ = recording_init
from fe2nn.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def _frames(prefix):
    """{(field, time): (where, value)} of every rank's recorded frames, gathered."""
    import glob

    out = {}
    for path in sorted(glob.glob(f"{prefix}.rank*.npz")):
        with np.load(path) as z:
            for i, key in enumerate(z["keys"]):
                name, t = str(key).split("|")
                w, v = out.get((name, float(t)), (None, None))
                out[(name, float(t))] = (z[f"where{i}"] if w is None else np.concatenate([w, z[f"where{i}"]]),
                                         z[f"value{i}"] if v is None else np.concatenate([v, z[f"value{i}"]]))
    return out


def _sorted(where, value):
    order = np.lexsort(where.T[::-1]) if where.ndim == 2 else np.argsort(where)
    return where[order], value[order]


@pytest.mark.parametrize("mesh", ["bar.msh", "bar_hex.msh"])
def test_a_checkpoint_resumes_on_another_number_of_ranks(tmp_path, mesh):
    """Killed on 1 rank, resumed on 2 and killed again, then resumed on 1 to the end: steps.csv, the
    strain paths and every VTX frame (the replayed ones moved twice between partitions) agree with
    an uninterrupted run to the round-off of runs on different numbers of ranks (P2 tetrahedra and
    Q2 hexahedra: nodes on edges, faces and inside cells)."""
    import subprocess

    ref, res = tmp_path / "ref", tmp_path / "res"
    (tmp_path / "frames.py").write_text(FRAMES)
    record = [sys.executable, str(tmp_path / "frames.py")]
    bar = dict(clamped=True, degree=2, max_iterations=25, mesh=mesh)  # fields that vary from cell to cell; nodes on edges too
    subprocess.run(record + [str(tmp_path / "ref_frames"), "solve",
                             str(_j2_bar(tmp_path / "ref.toml", ref, every=0, **bar)), "-q"],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    cfg = _j2_bar(tmp_path / "res.toml", res, every=2, **bar)
    _killed(tmp_path, cfg, after=2, n=1)
    _killed(tmp_path, cfg, after=4, n=2, extra=("--resume",))
    assert len(list((res / "checkpoint.history").glob("*.npys"))) == 2  # the 1-rank file went with its checkpoint
    proc = subprocess.run(record + [str(tmp_path / "res_frames"), "solve", str(cfg), "--resume"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming after step 4" in proc.stdout and "(written on 2 rank(s), moved onto 1)" in proc.stdout

    a, b = _rows(ref), _rows(res)
    assert [r["step"] for r in b] == [r["step"] for r in a] and len(a) == 6
    def column(rows, *keys):
        return np.array([[float(r[k]) for k in keys] for r in rows])

    for keys in (("time", "load_factor", "iterations"), ("u_x", "u_y", "u_z"), ("reaction_x", "reaction_y", "reaction_z")):
        x, y = column(a, *keys), column(b, *keys)  # each group to round-off of its largest entry
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-8 * np.abs(x).max(), err_msg=str(keys))
    with h5py.File(ref / "strain_paths.h5") as f, h5py.File(res / "strain_paths.h5") as g:
        for key in ("time", "x", "cell", "point"):
            np.testing.assert_array_equal(g[key][()], f[key][()])
        np.testing.assert_allclose(g["strain"][()], f["strain"][()], rtol=0, atol=1e-8 * np.abs(f["strain"][()]).max())
    fa, fb = _frames(tmp_path / "ref_frames"), _frames(tmp_path / "res_frames")
    assert sorted(fb) == sorted(fa) and len({t for _, t in fa}) == len(a) + 1  # the undeformed state and each step
    for key in fa:
        (wa, va), (wb, vb) = _sorted(*fa[key]), _sorted(*fb[key])
        np.testing.assert_array_equal(wb, wa)
        np.testing.assert_allclose(vb, va, rtol=0, atol=1e-8 * max(np.abs(va).max(), 1e-30), err_msg=str(key))
    assert sorted(p.name for p in res.iterdir()) == sorted(p.name for p in ref.iterdir())  # no checkpoint left


#: FRAMES, with the history files that each rank opens logged to <prefix>.reads.rank<r>
READS = """
import sys
from mpi4py import MPI
import fe2nn.macro.checkpoint as c
read = c.Checkpoint._read_history
def logged(path, n_bytes):
    with open(f"{sys.argv[1]}.reads.rank{MPI.COMM_WORLD.rank}", "a") as fh:
        fh.write(path.name.split(".")[1] + "\\n")
    return read(path, n_bytes)
c.Checkpoint._read_history = staticmethod(logged)
""" + FRAMES


def test_a_checkpoint_of_three_ranks_resumes_on_two_reading_only_the_files_of_their_cells(tmp_path):
    """Killed on 3 ranks, resumed on 2 (one partition of several ranks onto another): the same
    results as an uninterrupted run; every new rank reads the layout of all old ranks, but the state
    and history only of those that held its cells."""
    import subprocess

    ref, res = tmp_path / "ref", tmp_path / "res"
    (tmp_path / "reads.py").write_text(READS)
    record = [sys.executable, str(tmp_path / "reads.py")]
    bar = dict(clamped=True, degree=2, max_iterations=25)
    subprocess.run(record + [str(tmp_path / "ref_frames"), "solve",
                             str(_j2_bar(tmp_path / "ref.toml", ref, every=0, **bar)), "-q"],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    cfg = _j2_bar(tmp_path / "res.toml", res, every=2, **bar)
    _killed(tmp_path, cfg, after=4, n=3)
    proc = subprocess.run(mpirun_cmd(2, *record, str(tmp_path / "res_frames"), "solve", str(cfg), "--resume"),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming after step 4" in proc.stdout and "(written on 3 rank(s), moved onto 2)" in proc.stdout
    a, b = _rows(ref), _rows(res)
    assert [r["step"] for r in b] == [r["step"] for r in a] and len(a) == 6
    for key in ("u_x", "u_y", "u_z", "reaction_x", "reaction_y", "reaction_z"):
        x, y = np.array([float(r[key]) for r in a]), np.array([float(r[key]) for r in b])
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-8 * np.abs(x).max(), err_msg=key)
    fa, fb = _frames(tmp_path / "ref_frames"), _frames(tmp_path / "res_frames")
    assert sorted(fb) == sorted(fa)
    for key in fa:  # dof coordinates of another partition differ by round-off: to 1e-12 m
        (wa, va), (wb, vb) = (_sorted(np.round(w + 0.0, 12) + 0.0, v) for w, v in (fa[key], fb[key]))
        np.testing.assert_array_equal(wb, wa)
        np.testing.assert_allclose(vb, va, rtol=0, atol=1e-8 * max(np.abs(va).max(), 1e-30), err_msg=str(key))
    reads = [(tmp_path / f"res_frames.reads.rank{r}").read_text().split() for r in range(2)]
    for opened in reads:  # each old rank's layout, then the history of rank 0 and of the sources
        assert sorted(set(opened)) == ["rank0", "rank1", "rank2"] and opened[:3] == ["rank0", "rank1", "rank2"], opened
    histories = [sorted(opened[3:]) for opened in reads]
    assert any(len(h) < 3 for h in histories), histories  # a new rank skipped an old rank's history
