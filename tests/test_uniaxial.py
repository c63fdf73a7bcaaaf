"""Uniaxial-stress cycle check (fe2nn evaluate --uniaxial): closed-form deviation between two
perfectly plastic J2 laws, the RVE rebuilt from a dataset's config, one-line errors."""
from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli
from test_rno_synth import make_dataset
from test_rno_train import _config

from fe2nn.errors import UserError
from fe2nn.materials.j2 import J2Plasticity
from fe2nn.surrogate import uniaxial as U

E, NU, SY = 70e9, 0.3, 100e6


def test_perfectly_plastic_yield_stresses_5_percent_apart():
    """sigma_y and 1.05 sigma_y, no hardening: the loops differ by 0.05 sigma_y wherever one law
    flows and the other does not yet, and never by more; both yield in tension within the cycle."""
    ref, sur = J2Plasticity(E, NU, SY), J2Plasticity(E, NU, 1.05 * SY)
    res = U.compare(sur, ref, rates=[1e-3], amplitudes=[0.005], steps_per_branch=24)
    (case,) = res["cases"]
    assert case["max_deviation"] == pytest.approx(0.05, rel=1e-8)
    assert case["max_deviation_tension"] == pytest.approx(0.05, rel=1e-8)
    assert res["max_deviation"] == case["max_deviation"]
    same = U.compare(ref, ref, rates=[1e-3, 1e-2], amplitudes=[0.003, 0.005], steps_per_branch=8)
    assert len(same["cases"]) == 4 and same["max_deviation"] == 0.0
    # elastic cycle (amplitude below sigma_y/E): no deviation at all
    assert U.compare(sur, ref, rates=[1e-3], amplitudes=[0.5 * SY / E], steps_per_branch=8)["max_deviation"] \
        == pytest.approx(0.0, abs=1e-10)


def test_cycle_shape_and_rates():
    eps, t = U.cycle(0.004, 2e-3, steps_per_branch=4)
    assert eps.shape == t.shape == (13,)
    assert float(t[4]) == pytest.approx(2.0) and float(t[-1]) == pytest.approx(6.0)
    assert [round(float(eps[i]), 12) for i in (0, 4, 8, 12)] == [0.0, 0.004, 0.0, -0.004]
    lo, hi = 1e-3, 1e-2
    r = U.envelope_rates({"envelope": {"strain_rate_norm_min_nonzero": lo, "strain_rate_norm_max": hi}})
    assert r == pytest.approx([1.3 * lo, math.sqrt(lo * hi), hi / 1.3])
    with pytest.raises(UserError, match="strain-rate range"):
        U.envelope_rates({"envelope": {}})


def test_reference_rve_rebuilt_from_dataset_config(tmp_path):
    rve = {"solver": "taylor", "material": "aluminium", "microstructure": {"n_grains": 3, "grid": 8, "seed": 1}}
    ds = {"config": json.dumps({"rve": rve}), "path": str(tmp_path / "d.h5")}
    mat = U.reference_material(ds)
    res = U.compare(mat, mat, rates=[1e-3], amplitudes=[0.004], steps_per_branch=6)
    assert res["max_deviation"] == 0.0
    (eps, sur, ref), = res["curves"][0][1]
    assert ref.max() > 50e6 and ref.min() < -50e6  # yields in tension and in compression
    bad = {"config": json.dumps({"rve": {**rve, "material": "unobtainium"}}), "path": "d.h5"}
    with pytest.raises(UserError, match="d.h5: cannot rebuild the dataset's RVE"):
        U.reference_material(bad)


def test_taylor_rve_tangent_stays_positive_definite_at_short_steps(tmp_path):
    """The stability probe of fe2nn evaluate --rve-probe through a small Taylor RVE along synthetic
    random walks: a hardening, rate-dependent polycrystal keeps a positive definite tangent over the
    full increment and over 1/4 .. 1/64 of it, and shorter steps make it stiffer (towards elastic)."""
    from fe2nn.surrogate import evaluate as ev
    from fe2nn.surrogate.train import read_dataset

    rve = {"solver": "taylor", "material": "aluminium", "microstructure": {"n_grains": 4, "grid": 8, "seed": 2}}
    mat = U.reference_material({"config": json.dumps({"rve": rve}), "path": str(tmp_path / "d.h5")})
    d = read_dataset(make_dataset(tmp_path / "j2.h5", {"random_walk": 3}, T=12, seed=5))
    probe = ev.material_stability(mat, d["strain"], d["time"])
    lam = [probe[f]["min_eigenvalue"] for f in ("1", "0.25", "0.0625", "0.015625")]
    assert all(probe[f]["non_pd_share"] == 0.0 for f in probe)
    assert 0 < lam[0] < lam[1] < lam[2] < lam[3], lam


def test_rve_probe_reports_tangent_errors_against_the_rve(tmp_path):
    """fe2nn evaluate --rve-probe N on a dataset whose config names a (small) Taylor RVE: per group,
    the RVE's stability probe on N paths and the surrogate's consistent tangent against the RVE's
    along them (relative Frobenius and along-the-increment errors), in report.json and the table."""
    import h5py

    from fe2nn.surrogate import evaluate as ev

    data = make_dataset(tmp_path / "j2.h5", {"random_walk": 6, "monotonic": 2}, T=8, seed=2)
    rve = {"solver": "taylor", "material": "aluminium", "microstructure": {"n_grains": 3, "grid": 8, "seed": 1}}
    with h5py.File(data, "a") as f:
        f.attrs["config"] = json.dumps({"rve": rve})
    cfg = _config(tmp_path, data, "m", epochs=1)
    assert run_cli("train", str(cfg), "--no-progress").returncode == 0
    report = ev.evaluate(str(tmp_path / "m"), str(data), plots=False, rve_probe=2)
    for name, g in report["groups"].items():
        e = g["rve_tangent"]
        n = min(2, g["n_paths"])  # the random walks' held-out test split has 1 path
        assert e["paths"] == g["rve_stability"]["paths"] == n
        assert e["frobenius"]["n"] == n * 8 and 0 < e["frobenius"]["mean"] <= e["frobenius"]["max"] < 10
        assert 0 < e["along_increment"]["mean"] < 10
    table = ev.format_table(report)
    assert "monotonic: consistent tangent against the RVE's on 2 paths" in table
    on_disk = json.loads((tmp_path / "m" / "evaluation" / "report.json").read_text())
    assert on_disk["groups"]["monotonic"]["rve_tangent"] == report["groups"]["monotonic"]["rve_tangent"]


def test_rve_paths_compares_with_the_rve_along_the_path_the_surrogate_ran(tmp_path):
    """fe2nn evaluate --rve-paths N with the dataset's own law (rate-independent J2, linear mixed
    hardening) as the RVE: at dt x 1 it reproduces the data (the rows line up); on monotonic radial
    paths backward-Euler radial return is exact at any step, so the RVE's answer does not change
    with the step and the surrogate's errors against it are its errors against the data; on random
    walks the coarsened (straighter) path of dt x 4 is answered differently."""
    import h5py

    from fe2nn.surrogate import evaluate as ev
    from test_rno_synth import J2_PARAMS

    data = make_dataset(tmp_path / "j2.h5", {"random_walk": 8, "monotonic": 2}, T=8, seed=2)
    with h5py.File(data, "a") as f:
        f.attrs["config"] = json.dumps({"rve": {"solver": "j2", "options": J2_PARAMS}})
    cfg = _config(tmp_path, data, "m", epochs=1)
    assert run_cli("train", str(cfg), "--no-progress").returncode == 0
    report = ev.evaluate(str(tmp_path / "m"), str(data), plots=False, rve_paths=2)
    for name, g in report["groups"].items():
        sp = g["same_path"]
        assert sp["paths"] == min(2, g["n_paths"]) and sp["rve_substeps"] == ev.RVE_SUBSTEPS
        assert set(sp) - {"paths", "rve_substeps"} == {"dt x 1/4", "dt x 1", "dt x 4"}
        assert sp["dt x 1"]["rve_step_vs_data"]["max"] < 1e-12, name
        for lab, v in sp.items():
            if not isinstance(v, dict):
                continue
            assert v["rve_failed_paths"] == 0
            if name == "monotonic":  # the RVE's answer does not depend on the step here
                assert v["rve_step_vs_data"]["max"] < 1e-10 and v["rve_fine_vs_data"]["max"] < 1e-10, lab
                for ref in ("surrogate_vs_rve_step", "surrogate_vs_rve_fine"):
                    assert v[ref]["mean"] == pytest.approx(v["surrogate_vs_data"]["mean"], rel=1e-8)
    walks = report["groups"]["random_walk"]
    assert walks["same_path"]["dt x 4"]["rve_step_vs_data"]["mean"] > 1e-3  # another path, another answer
    # the same paths' errors against the data are the report's own (the first paths of the group)
    assert walks["same_path"]["dt x 1"]["surrogate_vs_data"]["mean"] == pytest.approx(
        walks["errors"]["dt x 1"]["mean"], rel=1e-12)  # the held-out split has 1 path: the same one
    assert "monotonic: against the RVE along the path the surrogate ran, 4 sub-steps" in ev.format_table(report)
    p = run_cli("evaluate", str(tmp_path / "m"), str(data), "--rve-paths", "-1")
    assert p.returncode == 2 and "--rve-paths must be >= 0, got -1" in p.stderr and "Traceback" not in p.stderr


def test_dataset_without_rve_config_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="no RVE configuration stored"):
        U.reference_material({"config": None, "path": "x.h5"})
    data = make_dataset(tmp_path / "j2.h5", {"random_walk": 4, "monotonic": 1, "cyclic": 1}, T=8, seed=1)
    cfg = _config(tmp_path, data, "m", epochs=1)
    assert run_cli("train", str(cfg), "--no-progress").returncode == 0
    p = run_cli("evaluate", str(tmp_path / "m"), str(data), "--uniaxial")
    assert p.returncode == 2 and "no RVE configuration stored" in p.stderr and str(data) in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert not (tmp_path / "m" / "evaluation").exists()  # refused before any work: nothing written
    p = run_cli("evaluate", str(tmp_path / "m"), str(data), "--rve-probe", "2")
    assert p.returncode == 2 and "no RVE configuration stored" in p.stderr and str(data) in p.stderr
    assert not (tmp_path / "m" / "evaluation").exists()


def test_same_path_errors_leave_out_and_count_the_paths_where_the_rve_fails(tmp_path):
    """A path on which the RVE cannot finish an increment (even with sub-steps) is left out of the
    same-path errors and counted; with every path failing only the counts remain."""
    import numpy as np
    import torch

    from fe2nn.materials.base import MaterialConvergenceError
    from fe2nn.surrogate import evaluate as ev
    from fe2nn.surrogate.train import read_dataset
    from test_rno_synth import J2_PARAMS

    class Brittle(J2Plasticity):  # fails wherever |strain| exceeds a limit
        limit = 0.0

        def update(self, strain, dt, state):
            bad = torch.linalg.vector_norm(strain, dim=-1) > self.limit
            if bool(bad.any()):
                raise MaterialConvergenceError("beyond the limit", failed=bad)
            return super().update(strain, dt, state)

    d = read_dataset(make_dataset(tmp_path / "j2.h5", {"random_walk": 3}, T=8, seed=4))
    s, sig, t = d["strain"], d["stress"], d["time"]
    peak = np.linalg.norm(s, axis=2).max(axis=1)
    rve = Brittle(**J2_PARAMS)
    rve.limit = float(np.sort(peak)[1]) * (1 + 1e-9)  # the path with the largest strain fails
    preds = {1.0: (sig[:, 1:], np.arange(8))}  # a "surrogate" that returns the data
    out = ev.same_path_errors(rve, s, sig, t, preds)["dt x 1"]
    assert out["rve_failed_paths"] == 1 and out["surrogate_vs_data"]["n"] == 2
    assert out["surrogate_vs_data"]["max"] == 0.0 and out["rve_step_vs_data"]["max"] < 1e-12
    rve.limit = 0.0
    assert ev.same_path_errors(rve, s, sig, t, preds)["dt x 1"] == {"rve_failed_paths": 3}


def test_evaluate_reports_odd_symmetry_of_the_surrogate_and_the_rve(tmp_path):
    """fe2nn evaluate reports how far the surrogate is from odd in the strain path (its stress along
    the negated paths against the negated stress, and its odd part's error); with --rve-probe also
    the RVE's own asymmetry: J2 with mixed hardening is odd to round-off, a plain trained model is
    not, and the same model made odd (rno.symmetrized) is odd to round-off with its odd part's error
    as its error."""
    import h5py

    from fe2nn.surrogate import evaluate as ev
    from fe2nn.surrogate.card import load_surrogate, save_surrogate
    from fe2nn.surrogate.rno import symmetrized
    from test_rno_synth import J2_PARAMS

    data = make_dataset(tmp_path / "j2.h5", {"random_walk": 8, "monotonic": 2}, T=8, seed=2)
    with h5py.File(data, "a") as f:
        f.attrs["config"] = json.dumps({"rve": {"solver": "j2", "options": J2_PARAMS}})
    assert run_cli("train", str(_config(tmp_path, data, "m", epochs=1)), "--no-progress").returncode == 0
    report = ev.evaluate(str(tmp_path / "m"), str(data), plots=False, rve_probe=2)
    for name, g in report["groups"].items():
        o = g["odd_symmetry"]
        assert o["rve_asymmetry"]["paths"] == min(2, g["n_paths"]) and o["rve_asymmetry"]["max"] < 1e-10, name
        assert o["surrogate_asymmetry"]["mean"] > 1e-4 and o["odd_part_error"]["mean"] > 0
    assert "monotonic: odd symmetry (dt x 1)" in ev.format_table(report)
    assert "the material is odd: [model] odd = true gives the surrogate the same symmetry" in ev.format_table(report)
    model, card = load_surrogate(tmp_path / "m")
    save_surrogate(symmetrized(model), tmp_path / "odd", {k: v for k, v in card.items() if k in ("dataset", "envelope")})
    odd = ev.evaluate(str(tmp_path / "odd"), str(data), plots=False)
    for name, g in odd["groups"].items():
        o = g["odd_symmetry"]
        assert o["surrogate_asymmetry"]["max"] < 1e-12, name
        assert o["odd_part_error"]["mean"] == pytest.approx(g["errors"]["dt x 1"]["mean"], rel=1e-10)
        assert o["odd_part_error"]["mean"] == pytest.approx(report["groups"][name]["odd_symmetry"]["odd_part_error"]["mean"], rel=1e-10)
