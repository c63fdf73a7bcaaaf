"""Macro J2 bar in uniaxial tension, loaded, unloaded and reversed, through the CLI on 1 and 2 ranks.

Rollers on x=0, y=0, z=0 and a prescribed x-displacement on x=L give a homogeneous
uniaxial stress state, so the reaction force must equal the material-point
response along the uniaxial-stress path (driven independently) times the area.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli

L, W = 1.0, 0.2  # meshes/bar.msh: [0,1] x [0,0.2] x [0,0.2] m
E, NU, SY, HISO, HKIN = 200e9, 0.3, 250e6, 2e9, 1e9
UMAX = 3e-3

CONFIG = f"""
[mesh]
file = "{REPO / 'meshes' / 'bar.msh'}"
degree = 1
[material]
model = "j2"
E = {E}
nu = {NU}
sigma_y = {SY}
H_iso = {HISO}
H_kin = {HKIN}
[[dirichlet]]
boundary = "xmin"
x = 0.0
[[dirichlet]]
boundary = 3          # ymin, by number
y = 0.0
[[dirichlet]]
boundary = "zmin"
z = 0.0
[[dirichlet]]
boundary = "xmax"
x = {UMAX}
[load]
times = [0.0, 1.0, 2.0, 3.0]
factors = [0.0, 1.0, 0.0, -0.6]
steps = 12
[solver]
rtol = 1e-10
[output]
dir = "out"
reaction = "xmax"
strain_paths = true
"""


def read_steps(path: Path) -> dict:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def material_point_reaction(times: np.ndarray, factors: np.ndarray) -> np.ndarray:
    from fe2nn.materials.drivers import uniaxial_stress
    from fe2nn.materials.j2 import J2Plasticity

    mat = J2Plasticity(E, NU, SY, H_iso=HISO, H_kin=HKIN)
    eps = torch.tensor(np.concatenate([[0.0], factors * UMAX / L]))
    t = torch.tensor(np.concatenate([[0.0], times]))
    _, stress = uniaxial_stress(mat, eps, t)
    return stress[0, 1:, 0].numpy() * W * W


@pytest.mark.parametrize("ranks", [1, 2])
def test_bar_reaction_equals_material_point_response(tmp_path, ranks):
    cfg = tmp_path / "bar.toml"
    cfg.write_text(CONFIG)
    proc = run_cli("solve", str(cfg), n=ranks, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "out"
    assert (out / "steps.csv").is_file() and (out / "force_displacement.png").is_file()
    assert (out / "displacement.bp").is_dir() and (out / "fields.bp").is_dir()
    assert not list(out.glob(".*tmp*")), "temporary output left behind"
    s = read_steps(out / "steps.csv")
    assert s["time"][-1] == pytest.approx(3.0)
    # the load path reaches yield, unloads elastically and yields again in compression
    ref = material_point_reaction(s["time"], s["load_factor"])
    assert ref.max() > 1.01 * SY * W * W and ref.min() < -1.01 * SY * W * W
    np.testing.assert_allclose(s["reaction_x"], ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    # lateral reactions vanish, mean displacement of the loaded face is the prescribed one
    assert np.abs(s["reaction_y"]).max() < 1e-8 * np.abs(ref).max()
    np.testing.assert_allclose(s["u_x"], s["load_factor"] * UMAX, rtol=0, atol=1e-12)
    # one progress line per step on rank 0 only, with its wall time and the time left (but the last)
    steps = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == len(s["time"])
    assert all(re.search(r"N  \d+\.\d\d? s, (\d+\.\d\d? s|\d+ min \d\d s|\d+ h \d\d min) left$", line) for line in steps[:-1])
    assert re.search(r"N  \d+\.\d\d? s$", steps[-1]), steps[-1]
    # strain paths at the quadrature points: homogeneous, axial strain = u / L, lateral strains
    # those of the uniaxial-stress material-point response
    import h5py

    with h5py.File(out / "strain_paths.h5") as fh:
        strain, t, x, cell = fh["strain"][()], fh["time"][()], fh["x"][()], fh["cell"][()]
    assert strain.shape[1:] == (len(s["time"]) + 1, 6) and strain.shape[0] == x.shape[0] == cell.size
    np.testing.assert_array_equal(t, np.concatenate([[0.0], s["time"]]))
    np.testing.assert_array_equal(strain[:, 0], 0.0)
    np.testing.assert_allclose(strain[:, 1:, 0], np.broadcast_to(s["load_factor"] * UMAX / L, strain[:, 1:, 0].shape),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(strain, np.broadcast_to(strain[:1], strain.shape), rtol=0, atol=1e-12)
    assert (x.min(axis=0) > 0).all() and (x.max(axis=0) < [L, W, W]).all()
    assert (np.diff(cell) >= 0).all()


def test_format_duration_of_progress_lines():
    from fe2nn.io_utils import format_duration

    assert [format_duration(x) for x in (0.043, 8.346, 18.34, 59.9, 60, 245, 3599, 3600, 7620)] == [
        "0.04 s", "8.35 s", "18.3 s", "59.9 s", "1 min 00 s", "4 min 05 s", "59 min 59 s", "1 h 00 min", "2 h 07 min"]
    assert format_duration(float("nan")) == format_duration(-1.0) == "?"


def test_time_left_at_the_pace_so_far():
    from fe2nn.io_utils import time_left

    assert time_left(10.0, 2.0, 3.0) == ", 15.0 s left"  # 5 s per unit done, 3 units to go
    assert time_left(10.0, 2.0, 3.0, cap=4.0) == ", 4.00 s left"
    assert time_left(10.0, 2.0, 0.0) == time_left(10.0, 0.0, 3.0) == ""
