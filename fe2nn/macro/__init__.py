"""Macroscale small-strain quasi-static solver on DOLFINx (MPI parallel).

    from fe2nn.macro import Problem, read_mesh, solve
"""
from __future__ import annotations

from mpi4py import MPI  # noqa: F401  (load MPI before DOLFINx)

from fe2nn.macro.loading import LoadTable
from fe2nn.macro.problem import Mesh, Problem, read_mesh
from fe2nn.macro.solver import NewtonSolver, Result, StepRecord, solve

__all__ = ["LoadTable", "Mesh", "NewtonSolver", "Problem", "Result", "StepRecord", "read_mesh", "solve"]
