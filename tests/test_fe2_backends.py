"""FE² backends behind the one material interface: surrogate vs Taylor RVE, rollback on a
forced failure, card checks before the solve, the out-of-distribution monitor."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli
from test_fe2_util import SURROGATE, TAYLOR, bar_config, needs_surrogate, reactions, rno_table, solve_in_process

from fe2nn.errors import UserError
from fe2nn.fe2 import OODMonitor
from fe2nn.materials.base import Material, MaterialConvergenceError
from fe2nn.materials.registry import build_material


# -- surrogate vs the RVE it was trained on ------------------------------------------------
@needs_surrogate
def test_surrogate_matches_taylor_fe2_within_measured_error(tmp_path):
    """Bar pulled to 0.5 % strain (past yield) at 2.5e-3 1/s, then partly unloaded: the reaction
    histories of Taylor-RVE FE² and of the surrogate trained on Taylor data differ by less than the
    surrogate's own measured test error (relative L2 over a path, from its card)."""
    card = json.loads((SURROGATE / "card.json").read_text())
    tol = card["errors"]["test_dt_x1"]["max"]
    kw = dict(strain=5e-3, times=(0.0, 2.0, 2.6), factors=(0.0, 1.0, 0.7), steps=8)
    sur = solve_in_process(bar_config(tmp_path / "s.toml", rno_table(), **kw))
    ref = solve_in_process(bar_config(tmp_path / "r.toml", TAYLOR, **kw))
    assert np.allclose(sur.times, ref.times)
    Rs, Rr = sur.reactions[:, 0], ref.reactions[:, 0]
    assert Rr.max() > 0 and np.all(np.diff(Rr[:6]) > 0)
    err = np.linalg.norm(Rs - Rr) / np.linalg.norm(Rr)
    assert err <= tol, (err, tol)
    assert max(s.iterations for s in sur.steps) <= 8


# -- commit / rollback of the history ------------------------------------------------------
class FailOnce(Material):
    """Wraps a material; the first update at time-step size ``dt_fail`` raises after computing."""

    def __init__(self, inner, dt_fail):
        super().__init__()
        self.inner, self.dt_fail, self.failed = inner, dt_fail, False
        self.device, self.dtype = inner.device, inner.dtype

    def initial_state(self, n):
        return self.inner.initial_state(n)

    def update(self, strain, dt, state):
        out = self.inner.update(strain, dt, state)  # advances a trial state that must be dropped
        self.info = self.inner.info
        if not self.failed and abs(dt - self.dt_fail) < 1e-12:
            self.failed = True
            raise MaterialConvergenceError("forced failure", failed=None)
        return out


@needs_surrogate
def test_forced_failure_rolls_back_history_and_matches_unfailed_run(tmp_path):
    """Steps of 0.25 s; the second step fails once, is cut back to two 0.125 s steps, and the run
    ends with exactly the answer of a failure-free run through the same times."""
    strain = 4e-3
    cfg = bar_config(tmp_path / "a.toml", rno_table(), strain=strain, times=(0.0, 1.0), factors=(0.0, 1.0), steps=4)
    mat = FailOnce(build_material(rno_table(), str(cfg)), dt_fail=0.25)
    mat.failed = True  # disarmed for the first step, armed after it (callback), fires once
    res = solve_in_process(cfg, material=mat, callback=lambda s, r: setattr(mat, "failed", r.step != 1))
    assert [round(t, 6) for t in res.times] == [0.25, 0.375, 0.5, 0.75, 1.0]
    assert res.steps[1].cutbacks == 1
    ref_cfg = bar_config(tmp_path / "b.toml", rno_table(), strain=strain,
                         times=(0.0, 0.25, 0.375, 0.5, 0.75, 1.0), factors=(0.0, 0.25, 0.375, 0.5, 0.75, 1.0),
                         max_dt=0.25)
    ref = solve_in_process(ref_cfg)
    assert np.allclose(ref.times, res.times, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.reactions, ref.reactions, rtol=1e-10, atol=1e-6)
    for k in ref.solver.state:
        np.testing.assert_allclose(res.solver.state[k].numpy(), ref.solver.state[k].numpy(), rtol=1e-10, atol=1e-14)


# -- card checks before the solve ----------------------------------------------------------
def _broken(tmp_path, kind):
    d = tmp_path / "sur"
    shutil.copytree(SURROGATE, d, ignore=shutil.ignore_patterns("data", "*.h5", "*.png", "*.toml"))
    card = json.loads((d / "card.json").read_text())
    if kind == "missing":
        shutil.rmtree(d)
    elif kind == "strain_dim":
        card["architecture"]["strain_dim"] = 3
        (d / "card.json").write_text(json.dumps(card))
    elif kind == "tampered":
        data = bytearray((d / "weights.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (d / "weights.safetensors").write_bytes(bytes(data))
    elif kind == "format":
        card["format_version"] = 99
        (d / "card.json").write_text(json.dumps(card))
    return d


@needs_surrogate
@pytest.mark.parametrize("kind,needle", [("missing", "surrogate not found"), ("strain_dim", "strain dimension"),
                                         ("tampered", "sha256"), ("format", "format version")])
def test_bad_surrogate_is_one_line_before_the_solve(tmp_path, kind, needle):
    d = _broken(tmp_path, kind)
    cfg = bar_config(tmp_path / "c.toml", rno_table(d), out=str(tmp_path / "out"))
    with pytest.raises(UserError, match=needle):
        build_material(rno_table(d), str(cfg))
    if kind in ("strain_dim", "tampered"):  # the CLI path, end to end (slower: one per family of errors)
        proc = run_cli("solve", str(cfg))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr and str(d) in lines[0], proc.stderr
        assert needle in lines[0]
        assert not (tmp_path / "out").exists()


@needs_surrogate
def test_surrogate_chunk_key(tmp_path):
    """material.chunk: 0 (default) picks the device's pass size, a number is kept, a negative one is
    an error naming the key."""
    cfg = str(tmp_path / "c.toml")
    assert build_material(rno_table(), cfg).chunk == 1024  # CPU
    assert build_material(rno_table(chunk=5000), cfg).chunk == 5000
    with pytest.raises(UserError, match=r"key 'material.chunk' = -1 must be >= 0"):
        build_material(rno_table(chunk=-1), cfg)


def test_surrogate_tangent_dtype_key(tmp_path):
    """material.tangent_dtype: auto (default) is float32 on a CPU (a separate pass, lazily) and would be
    float64 on a GPU (from the stress pass); an explicit value is kept; another is an error naming
    the key."""
    import torch

    from fe2nn.surrogate.material import RNOMaterial

    cfg = str(tmp_path / "c.toml")
    assert build_material(rno_table(), cfg).tangent_dtype == torch.float32
    assert build_material(rno_table(tangent_dtype="float64"), cfg).tangent_dtype == torch.float64
    assert RNOMaterial.auto_tangent_dtype(torch.device("cuda")) == "float64"
    assert RNOMaterial.auto_tangent_dtype(torch.device("cpu")) == "float32"
    with pytest.raises(UserError, match=r"key 'material.tangent_dtype'.*'float16'"):
        build_material(rno_table(tangent_dtype="float16"), cfg)


def test_one_key_switch_accepts_every_key_of_the_other_backend():
    """A [material] table written for "rno" switches to "rve" (and back) with the one key model, also
    when it sets keys that only the other backend uses; fe2nn validate's default reference relies on
    it.  Checked field by field, so a key added to one backend and not the other fails here."""
    import dataclasses

    from fe2nn.materials.registry import parse_material
    from fe2nn.materials.rno import RnoParams
    from fe2nn.materials.rve import RveParams

    rno_keys = {f.name for f in dataclasses.fields(RnoParams)}
    rve_keys = {f.name for f in dataclasses.fields(RveParams)}
    assert rno_keys == rve_keys
    table = {"surrogate": "s", "device": "cpu", "envelope_margin": 0.1, "chunk": 64, "tangent_dtype": "float64",
             "threads": 1, "solver": "taylor", "material": "aluminium", "options": {},
             "microstructure": {"n_grains": 4, "grid": 8, "seed": 1}}
    assert set(table) == rno_keys
    for model in ("rno", "rve"):
        assert parse_material({"model": model, **table}, "c.toml")[0] == model
        with pytest.raises(UserError, match=r"c.toml: .*threads.*-1"):  # both check it alike
            parse_material({"model": model, **table, "threads": -1}, "c.toml")
    # the keys each accepts only to ignore them: the other's own keys (the validation report drops them)
    from fe2nn.materials.rno import RVE_KEYS
    from fe2nn.materials.rve import RNO_KEYS
    from fe2nn.validate import material_summary

    assert set(RVE_KEYS) | set(RNO_KEYS) | {"device", "threads"} == rno_keys
    assert not set(RVE_KEYS) & set(RNO_KEYS)
    assert set(json.loads(material_summary({"model": "rno", **table}))) == {"model", *rno_keys} - set(RVE_KEYS)
    assert set(json.loads(material_summary({"model": "rve", **table}))) == {"model", *rno_keys} - set(RNO_KEYS)


def test_missing_surrogate_cli(tmp_path):
    """No surrogate at the path: exit 2, one line naming the path, nothing written."""
    cfg = bar_config(tmp_path / "c.toml", rno_table(tmp_path / "nowhere"), out=str(tmp_path / "out"))
    proc = run_cli("solve", str(cfg))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_rve_backend_config_errors_name_the_key(tmp_path):
    cfg = str(tmp_path / "c.toml")
    with pytest.raises(UserError, match=r"material.options.sgma_y"):
        build_material({"model": "rve", "solver": "j2", "options": {"E": 7e10, "nu": 0.3, "sgma_y": 1e8}}, cfg)
    with pytest.raises(UserError, match=r"material.solver"):
        build_material({"model": "rve", "solver": "fem"}, cfg)
    with pytest.raises(UserError, match=r"material.microstructure.n_grain"):
        build_material({"model": "rve", "microstructure": {"n_grain": 3}}, cfg)
    taylor = {"model": "rve", "solver": "taylor", "microstructure": {"n_grains": 2}}
    assert build_material(dict(taylor, options={"substep_tol": 1e-3}), cfg).crystal.substep_tol == 1e-3
    with pytest.raises(UserError, match=r"substep_tol must be >= 0 and < 1.*got -0.1"):
        build_material(dict(taylor, options={"substep_tol": -0.1}), cfg)
    fft = dict(taylor, solver="fft", microstructure={"n_grains": 2, "grid": 2})
    assert build_material(dict(fft, options={"substep_tol": 1e-3}), cfg).voxel.substep_tol == 1e-3
    with pytest.raises(UserError, match=r"substep_tol must be >= 0 and < 1.*got 1.5"):
        build_material(dict(fft, options={"substep_tol": 1.5}), cfg)


# -- out-of-distribution monitor -----------------------------------------------------------
@needs_surrogate
@pytest.mark.parametrize("strain,expect_ood", [(2e-3, False), (6e-2, True)])
def test_ood_monitor_counts_points_outside_the_envelope(tmp_path, strain, expect_ood):
    """0.2 % strain at 2e-3 1/s lies inside the training envelope (|eps| <= 0.02, rates 1e-3..1e-2 1/s);
    6 % strain (three times the largest training strain) does not."""
    cfg = bar_config(tmp_path / "o.toml", rno_table(), strain=strain, times=(0.0, 1.0 if not expect_ood else 6.0),
                     steps=3)
    mon = OODMonitor()
    try:
        # far outside the envelope the surrogate may not converge: few iterations keep the cut-backs cheap
        solve_in_process(cfg, callback=mon, max_iterations=8)
    except Exception:  # noqa: BLE001
        pass
    s = mon.summary()
    assert s["monitored"]
    if expect_ood:
        assert s["max_ood_points"] > 0 and s["steps_with_ood"] > 0
        assert s["max_by_cause"]["strain"] > 0  # the cause is named: strain beyond the envelope
        assert "WARNING" in mon.line() and "by strain" in mon.line()
    else:
        assert s["total_ood_point_steps"] == 0 and s["steps"] == 3
        assert s["max_by_cause"] == {"strain": 0, "rate": 0, "path": 0}


@needs_surrogate
def test_ood_monitor_flags_histories_longer_than_the_training_paths(tmp_path):
    """+-0.2 % tension-compression cycles stay inside the strain and rate envelope, but after about
    ten half-cycles (4.6e-3 of strain path each) the accumulated strain path exceeds the longest
    training path (card: 4.5e-2): from then on the points are flagged, by path length only."""
    half = 16
    times = [0.0] + [0.6 + 1.2 * i for i in range(half + 1)]
    factors = [0.0] + [(-1.0) ** i for i in range(half + 1)]
    cfg = bar_config(tmp_path / "c.toml", rno_table(), strain=2e-3, times=times, factors=factors, steps=None,
                     max_dt=0.3)
    mon = OODMonitor()
    solve_in_process(cfg, callback=mon)
    s = mon.summary()
    assert s["max_by_cause"]["strain"] == 0 and s["max_by_cause"]["rate"] == 0
    first = s["first_ood_step"]
    assert first is not None and 36 <= first <= 46, first  # 4 steps per half-cycle: 9-11 half-cycles
    c = s["per_step"][first - 1:]  # the path only grows: once flagged, a point stays flagged
    assert all(a <= b for a, b in zip(c, c[1:])) and c[-1] == s["n_points"] == s["max_by_cause"]["path"]
    assert "by strain path length" in mon.line()


# -- fe2nn validate: config errors ----------------------------------------------------------
@pytest.mark.parametrize("extra,needle", [("", "missing table '[validate]'"),
                                          ("\n[validate]\nstress_steps = [0]\n", "validate.stress_steps"),
                                          ("\n[validate]\nstres_steps = [1]\n", "validate.stres_steps"),
                                          ("\n[validate]\n[validate.reference]\nmodel = \"rvee\"\n", "did you mean 'rve'"),
                                          ("\n[validate]\nrefine = 0\n", "validate.refine")])
def test_validate_config_errors_are_one_line(tmp_path, extra, needle):
    cfg = bar_config(tmp_path / "v.toml", rno_table(tmp_path / "nowhere"), out=str(tmp_path / "out"), extra=extra)
    from fe2nn.validate import main

    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")) as err:
        main([str(cfg)])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_validate_keeps_the_compared_stress_fields_in_a_temporary_file(tmp_path):
    """The recorded stress fields go to a nameless temporary file (fe2nn.io_utils.Spool), not to
    memory, and are read back bit for bit by time; a Spool refuses an array of another shape."""
    from fe2nn.io_utils import Spool
    from fe2nn.validate import _Fields

    a = np.random.default_rng(0).standard_normal((7, 6))
    fields = _Fields()
    for i, t in enumerate((0.5, 1.0, 1.5)):
        fields.add(t, (i + 1) * a)
    assert list(fields) == [0.5, 1.0, 1.5] and len(fields) == 3 and fields._spool._file.tell() == 3 * a.nbytes
    for t, k in ((1.5, 3), (0.5, 1), (1.0, 2)):  # in any order
        np.testing.assert_array_equal(fields[t], k * a)
    np.testing.assert_array_equal(fields.rows(1, 3), np.stack([2 * a, 3 * a]))  # in recording order
    with pytest.raises(ValueError, match="recorded already"):
        fields.add(1.0, a)
    fields.close()
    spool = Spool((2, 6), directory=tmp_path)
    spool.append(np.ones((3, 2, 6)))
    spool.append(np.zeros((2, 6)))
    assert len(spool) == 4 and not any(tmp_path.iterdir())  # no name in the directory
    np.testing.assert_array_equal(spool.read(2, 4), np.stack([np.ones((2, 6)), np.zeros((2, 6))]))
    with pytest.raises(ValueError, match=r"Spool of \(2, 6\)"):
        spool.append(np.ones((3, 6)))
    with pytest.raises(IndexError):
        spool.read(3, 5)
    spool.close()


@needs_surrogate
def test_validate_refine_reports_the_references_own_step_error(tmp_path):
    """validate.refine = 2 with an elastic reference: an elastic answer does not depend on the step,
    so the reference's own step error is zero (to the solver's tolerance) at every step and in the
    stress fields; the rate-dependent surrogate does move.  The refined comparison is recomputed
    from the refined runs' steps.csv; each refined run has twice the steps."""
    elastic = {"model": "elastic", "E": 60e9, "nu": 0.33}  # E = 70e9 by --set (recorded in the report)
    ref = "\n".join(f"{k} = {json.dumps(v)}" for k, v in elastic.items())
    cfg = bar_config(tmp_path / "v.toml", rno_table(), strain=4e-3, times=(0.0, 2.0, 3.0), factors=(0.0, 1.0, 0.5),
                     steps=4, out=str(tmp_path / "val"),
                     extra=f"[validate]\nstress_steps = [2, 4]\nrefine = 2\n[validate.reference]\n{ref}\n")
    proc = run_cli("validate", str(cfg), "-q", "--strict", "--set", "validate.reference.E=70e9")
    assert "[4/4] reference solve at 2 x the steps" in proc.stdout and "its own step error" in proc.stdout
    out = tmp_path / "val"
    rep = json.loads((out / "report.json").read_text())
    assert rep["overrides"] == ["validate.reference.E=70e9"] and json.loads(rep["reference_material"])["E"] == 70e9
    assert (out / "report.md").read_text().splitlines()[0].endswith("v.toml --set validate.reference.E=70e9")
    # a plastic surrogate against an elastic reference misses the 3 % target: --strict exits with 1,
    # after writing the report
    assert not rep["pass"] and "(FAIL, target 3%)" in proc.stdout and proc.returncode == 1, proc.stderr
    rf = rep["refinement"]

    R, rows = reactions(out / "reference" / "steps.csv")
    Rf, rows_f = reactions(out / "reference_refined" / "steps.csv")
    Sf, _ = reactions(out / "surrogate_refined" / "steps.csv")
    t, tf = (np.array([float(r["time"]) for r in x]) for x in (rows, rows_f))
    assert len(tf) == 2 * len(t) == rf["steps"] and rf["factor"] == 2  # 5 steps (3 + 2 by segment) -> 10
    np.testing.assert_allclose(tf[1::2], t, rtol=0, atol=1e-12)
    e = rf["reference_step_error"]
    assert e["compared_steps"] == len(t) and e["max_reaction_deviation"] < 1e-8
    assert [s["step"] for s in e["stress_relative_l2"]] == [2, 4] and e["max_stress_relative_l2"] < 1e-8
    assert rf["surrogate_step_change"]["max_reaction_deviation"] > 1e-6  # rate-dependent: it moves
    dev = np.linalg.norm(Sf - Rf, axis=1).max() / np.linalg.norm(Rf, axis=1).max()
    assert rf["comparison"]["compared_steps"] == len(tf)
    assert rf["comparison"]["max_reaction_deviation"] == pytest.approx(dev, rel=1e-9)
    assert "Step-size check" in (out / "report.md").read_text()
    # each of the four runs says what it was (fe2nn inspect reads it)
    for run, model, n_steps, per in (("surrogate", "rno", 5, 1), ("reference", "elastic", 5, 1),
                                     ("surrogate_refined", "rno", 10, 2), ("reference_refined", "elastic", 10, 2)):
        rec = json.loads((out / run / "run.json").read_text())
        assert rec["command"] == f"fe2nn validate {cfg} -q --strict --set validate.reference.E=70e9"
        assert rec["validate_run"] == run and rec["material"]["model"] == model, rec
        assert rec["finished"] and rec["steps"] == n_steps and rec["steps_per_config_step"] == per
        assert rec["overrides"] == ["validate.reference.E=70e9"] and len(rec["mesh_sha256"]) == 64
    assert json.loads((out / "reference" / "run.json").read_text())["material"]["E"] == 70e9
    proc = run_cli("inspect", str(out / "reference_refined"), check=True)
    assert "fe2nn validate" in proc.stdout and "10" in proc.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("env, expected", [({}, "True True"), ({"FE2NN_MALLOC": "default"}, "False False")])
def test_keep_freed_memory(env, expected):
    # process-wide, so each case in a fresh interpreter; idempotent (second call: same answer)
    code = "from fe2nn.fe2 import keep_freed_memory as k; print(k(), k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    assert " ".join(out) == expected
