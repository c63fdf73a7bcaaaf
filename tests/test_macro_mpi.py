"""The same J2 plate-with-hole problem (inhomogeneous plastic zone) on 1 and 2 MPI ranks
gives the same reaction-force history to 1e-8 relative."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from conftest import REPO, run_cli, run_python_mpi
from test_macro_bar import read_steps

CONFIG = """
[mesh]
file = "plate.msh"
degree = 1
quadrature_degree = 1
[material]
model = "j2"
E = 70e9
nu = 0.33
sigma_y = 250e6
H_iso = 1e9
[[dirichlet]]
boundary = "xsym"
x = 0.0
[[dirichlet]]
boundary = "ysym"
y = 0.0
[[dirichlet]]
boundary = "zsym"
z = 0.0
[[dirichlet]]
boundary = "top"
y = 0.5e-3
[[traction]]
boundary = "right"
value = [20e6, 0.0, 0.0]
[load]
times = [0.0, 1.0, 1.5]
factors = [0.0, 1.0, 0.2]
max_dt = 0.25
[solver]
rtol = 1e-11
[output]
dir = "out{n}"
reaction = "top"
vtx = false
strain_paths = true
"""


def test_one_and_two_ranks_give_the_same_reaction_history(tmp_path):
    subprocess.run([sys.executable, str(REPO / "meshes" / "plate_hole.py"), "--h", "0.025", "--refine", "0.4",
                    "--out", str(tmp_path / "plate.msh")], check=True, capture_output=True)
    results = {}
    for n in (1, 2):
        cfg = tmp_path / f"plate{n}.toml"
        cfg.write_text(CONFIG.format(n=n))
        proc = run_cli("solve", str(cfg), n=n, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results[n] = read_steps(tmp_path / f"out{n}" / "steps.csv")
    r1, r2 = results[1], results[2]
    np.testing.assert_array_equal(r1["time"], r2["time"])
    R1 = np.stack([r1["reaction_x"], r1["reaction_y"], r1["reaction_z"]], 1)
    R2 = np.stack([r2["reaction_x"], r2["reaction_y"], r2["reaction_z"]], 1)
    scale = np.abs(R1).max()
    assert scale > 0
    np.testing.assert_allclose(R2, R1, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(r2["u_y"], r1["u_y"], rtol=1e-12)
    # the strain paths at the quadrature points: the same points in the same order, the same values
    import h5py

    files = [h5py.File(tmp_path / f"out{n}" / "strain_paths.h5") for n in (1, 2)]
    for key in ("cell", "point", "time"):
        np.testing.assert_array_equal(files[1][key][()], files[0][key][()])
    np.testing.assert_allclose(files[1]["x"][()], files[0]["x"][()], rtol=0, atol=1e-14)
    e1, e2 = files[0]["strain"][()], files[1]["strain"][()]
    assert e1.shape == (files[0]["x"].shape[0], len(r1["time"]) + 1, 6)
    np.testing.assert_allclose(e2, e1, rtol=0, atol=1e-8 * np.abs(e1).max())
    # the plastic zone makes the paths differ from point to point
    assert np.ptp(e1[:, -1, 1]) > 0.5 * np.abs(e1[:, -1, 1]).max()
    # the plate yields: the reaction is no longer proportional to the load
    stiffness = r1["reaction_y"] / r1["load_factor"]
    assert stiffness[3] < 0.9 * stiffness[0]
    # written a few steps at a time (each rank streams its strains to a temporary file; rank 0
    # gathers slabs of steps): the same file as written in one slab
    slab = 5 * 48 * files[0]["x"].shape[0]  # bytes of 5 steps of all points: ragged last slab
    (tmp_path / "slabs.py").write_text(f"""
import sys
from mpi4py import MPI
from fe2nn.macro.history import StrainHistory
StrainHistory.SLAB_BYTES = {slab}
from fe2nn.cli import main
raise SystemExit(main(sys.argv[1:]))
""")
    cfg = tmp_path / "plate_slabs.toml"
    cfg.write_text(CONFIG.format(n=2).replace('dir = "out2"', 'dir = "slabs"'))
    run_python_mpi(2, str(tmp_path / "slabs.py"), "solve", str(cfg), "-q")
    assert (len(r2["time"]) + 1) % 5 != 0  # (so that the last slab is a short one)
    with h5py.File(tmp_path / "slabs" / "strain_paths.h5") as f:
        assert f["strain"].chunks[1] == 5
        for key in ("strain", "time", "x", "cell", "point"):
            np.testing.assert_array_equal(f[key][()], files[1][key][()])
