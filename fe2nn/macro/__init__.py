"""Macroscale small-strain quasi-static solver on DOLFINx (MPI parallel).

    from fe2nn.macro import Problem, read_mesh, solve

Names are imported lazily so that ``fe2nn solve`` can validate its config
before loading DOLFINx and torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "LoadTable": "fe2nn.macro.loading",
    "Mesh": "fe2nn.macro.problem",
    "Problem": "fe2nn.macro.problem",
    "read_mesh": "fe2nn.macro.problem",
    "NewtonSolver": "fe2nn.macro.solver",
    "Result": "fe2nn.macro.solver",
    "StepRecord": "fe2nn.macro.solver",
    "solve": "fe2nn.macro.solver",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from mpi4py import MPI  # noqa: F401  (MPI before DOLFINx)

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fe2nn.macro' has no attribute {name!r}")
