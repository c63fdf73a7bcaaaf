"""Bad input to ``fe2nn solve``: one clear line on stderr naming the file/key/value,
non-zero exit, no traceback, no output left behind."""
from __future__ import annotations

import pytest

from conftest import REPO, run_cli

GOOD = {
    "mesh": f'[mesh]\nfile = "{REPO / "meshes" / "bar.msh"}"\ndegree = 1\n',
    "material": '[material]\nmodel = "j2"\nE = 200e9\nnu = 0.3\nsigma_y = 250e6\n',
    "bcs": '[[dirichlet]]\nboundary = "xmin"\nx = 0.0\n[[dirichlet]]\nboundary = "xmax"\nx = 1e-3\n',
    "rest": '[load]\nsteps = 2\n[output]\ndir = "out"\nreaction = "xmax"\n',
}


def config(**replace) -> str:
    parts = dict(GOOD, **replace)
    return "\n".join(parts.values())


CASES = {
    "missing mesh": (dict(mesh='[mesh]\nfile = "nowhere.msh"\n'), ["mesh.file", "nowhere.msh", "not found"]),
    "not a mesh": (dict(mesh='[mesh]\nfile = "junk.msh"\n'), ["mesh.file", "junk.msh", "gmsh"]),
    "unknown boundary": (dict(bcs='[[dirichlet]]\nboundary = "left"\nx = 0.0\n'),
                         ["'dirichlet[0].boundary'", "'left'", "bar.msh", "xmin"]),
    "unknown boundary number": (dict(rest='[output]\ndir = "out"\nreaction = 42\n'), ["output.reaction", "42"]),
    "mistyped key": (dict(rest='[load]\nstep = 2\n[output]\ndir = "out"\n'), ["'load.step'", "did you mean 'load.steps'"]),
    "unknown section": (dict(rest='[outptu]\ndir = "out"\n'), ["'outptu'", "output"]),
    "E <= 0": (dict(material='[material]\nmodel = "j2"\nE = -1.0\nnu = 0.3\nsigma_y = 250e6\n'),
               ["material.E", "-1.0", "> 0"]),
    "nu >= 0.5": (dict(material='[material]\nmodel = "elastic"\nE = 1e9\nnu = 0.5\n'), ["material.nu", "0.5"]),
    "sigma_y <= 0": (dict(material='[material]\nmodel = "j2"\nE = 1e9\nnu = 0.3\nsigma_y = 0.0\n'),
                     ["material.sigma_y", "0.0"]),
    "unknown model": (dict(material='[material]\nmodel = "j3"\nE = 1e9\nnu = 0.3\n'), ["material.model", "'j3'", "j2"]),
    "wrong type": (dict(material='[material]\nmodel = "j2"\nE = "stiff"\nnu = 0.3\nsigma_y = 1e6\n'),
                   ["material.E", "'stiff'", "number"]),
    "bad load table": (dict(rest='[load]\ntimes = [0.0, 1.0, 1.0]\nfactors = [0.0, 1.0, 0.0]\n'),
                       ["load", "strictly increasing"]),
    # --set KEY=VALUE: checked as the file's keys are, named as they are
    "bad value by --set": ({}, ["material.E", "-1", "> 0"], ("--set", "material.E=-1")),
    "misspelt key by --set": ({}, ["'material.sigma_yy'", "did you mean 'material.sigma_y'"],
                              ("--set", "material.sigma_yy=1e6")),
    "--set into a list": ({}, ["--set 'dirichlet.x=1'", "'dirichlet'", "not a table", "'dirichlet[0].x'"],
                          ("--set", "dirichlet.x=1")),
    "--set past the array": ({}, ["'dirichlet'", "2 entries", "not [2]"], ("--set", "dirichlet[2].x=1")),
    "bad entry by --set": ({}, ["'dirichlet[1].boundary'", "'left'", "xmin"], ("--set", "dirichlet[1].boundary=left")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_line(tmp_path, case):
    replace, expected, *args = CASES[case]
    (tmp_path / "junk.msh").write_text("this is not a mesh\n")
    cfg = tmp_path / "bad.toml"
    cfg.write_text(config(**replace))
    proc = run_cli("solve", str(cfg), *(args[0] if args else ()), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fe2nn: error: ") and "bad.toml" in lines[0]
    for word in expected:
        assert word in lines[0], (word, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "junk.msh"], "output left behind"


def test_bad_input_under_mpi_is_reported_once(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(config(bcs='[[dirichlet]]\nboundary = "left"\nx = 0.0\n'))
    proc = run_cli("solve", str(cfg), n=2, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.count("fe2nn: error:") == 1, proc.stderr
    assert not (tmp_path / "out").exists()


def test_load_beyond_the_limit_cuts_back_then_fails_clearly(tmp_path):
    """Perfectly plastic bar pulled by a traction above sigma_y * area: no equilibrium
    exists, so the solver cuts the step back down to min_dt and stops with SolverError."""
    cfg = tmp_path / "limit.toml"
    cfg.write_text(config(
        bcs='[[dirichlet]]\nboundary = "xmin"\nx = 0.0\n[[dirichlet]]\nboundary = "ymin"\ny = 0.0\n'
            '[[dirichlet]]\nboundary = "zmin"\nz = 0.0\n[[traction]]\nboundary = "xmax"\nvalue = [300e6, 0.0, 0.0]\n',
        rest='[load]\nsteps = 2\n[solver]\nmax_iterations = 8\nmin_dt = 0.05\n[output]\ndir = "out"\nreaction = "xmin"\n'))
    proc = run_cli("solve", str(cfg), timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "cut back" in proc.stdout
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "min_dt" in err[0] and "load factor" in err[0], proc.stderr
    # the diagnosis: above the limit load the perfectly plastic bar has no stiffness left along the
    # flow direction (a zero eigenvalue of the tangent) at its yielded points
    assert "points with a tangent that is not positive definite" in err[0], err[0]
    # the converged (elastic) step is kept, complete
    steps = (tmp_path / "out" / "steps.csv").read_text().strip().splitlines()
    assert len(steps) >= 2 and steps[0].startswith("step,time")
    assert not list((tmp_path / "out").glob(".*"))
