"""Shared test helpers.  MPI tests run a script under ``mpirun -n N`` in a subprocess
so one pytest run covers serial and parallel checks."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def mpirun_cmd(n: int, *args: str) -> list[str]:
    mpirun = BIN / "mpirun"
    if not mpirun.exists():
        mpirun = Path(shutil.which("mpirun") or "mpirun")
    return [str(mpirun), "-n", str(n), *args]


def run_cli(*args: str, n: int = 1, cwd=None, timeout: float = 600, check: bool = False):
    """Run ``fe2nn ARGS`` (under mpirun when n > 1); return CompletedProcess (text)."""
    base = [sys.executable, "-m", "fe2nn", *args]
    cmd = mpirun_cmd(n, *base) if n > 1 else base
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_python_mpi(n: int, script: str, *args: str, cwd=None, timeout: float = 600):
    """Run a python script under mpirun -n n; raise with its output when it fails."""
    cmd = mpirun_cmd(n, sys.executable, script, *args) if n > 1 else [sys.executable, script, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def repo() -> Path:
    return REPO


def softening_material(E: float = 1e9, c: float = 1e12, e0: float = 1e-3, far: float | None = None):
    """A test law that softens: sigma = E eps - c <eps11 - e0>^2 e1 (Mandel, nu = 0) with its
    consistent tangent E I - 2 c <eps11 - e0> e1 e1, which stops being positive definite past
    eps11 = e0 + E / (2 c).  With ``far``, it flags eps11 > far as outside its envelope (the
    surrogate's ``ood`` info, cause "strain")."""
    from fe2nn.fe2 import OOD_CAUSES, OOD_KEY
    from fe2nn.materials.base import Material

    class Softening(Material):
        point_info = (OOD_KEY, *OOD_CAUSES.values()) if far is not None else ()

        def initial_state(self, n):
            return {}

        def update(self, strain, dt, state):
            strain = self.as_tensor(strain)
            over = torch.clamp(strain[:, 0] - e0, min=0.0)
            stress = E * strain
            stress[:, 0] -= c * over ** 2
            tangent = E * torch.eye(6, dtype=strain.dtype).repeat(strain.shape[0], 1, 1)
            tangent[:, 0, 0] -= 2 * c * over
            if far is not None:
                out = strain[:, 0] > far
                none = torch.zeros_like(out)
                self.info = {OOD_KEY: out, "ood_strain": out, "ood_rate": none, "ood_path": none}
            return stress, tangent, {}

    return Softening()
