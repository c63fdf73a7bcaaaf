"""Schema of the ``fe2nn solve`` TOML config (validated up front, one-line errors).

Example (paths relative to the config file, SI units)::

    [mesh]
    file = "../meshes/bar.msh"      # gmsh .msh with named physical groups
    degree = 1                      # Lagrange degree of the displacement (1 or 2)

    [material]
    model = "j2"                    # see fe2nn.materials.registry
    E = 200e9
    nu = 0.3
    sigma_y = 250e6

    [[dirichlet]]                   # u_i = value_i * load factor on a tagged surface
    boundary = "xmin"               # physical name or number
    x = 0.0

    [[traction]]                    # t = value * load factor  [Pa]
    boundary = "top"
    value = [0.0, 1e6, 0.0]         # or: pressure = 1e6  (t = -p n)

    [load]
    times = [0.0, 1.0, 2.0]         # [s], strictly increasing
    factors = [0.0, 1.0, 0.0]       # piecewise-linear load factor
    steps = 20                      # number of uniform steps (or max_dt)

    [solver]
    linear_solver = "direct"        # "direct" (MUMPS) | "iterative" (CG + GAMG) | "auto"

    [output]
    dir = "results/bar"
    reaction = "xmax"
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from fe2nn.config import in_range, non_negative, one_of, positive

Tag = int | str


def _petsc_values(d: dict):
    bad = [k for k, v in d.items() if not isinstance(v, (str, int, float, bool))]
    return f"values must be strings, numbers or booleans (bad: {', '.join(bad)})" if bad else None


def _boundary_doc() -> dict:
    return dict(doc="a physical surface name (string) or number (integer) of the mesh")


@dataclass
class MeshConfig:
    file: str = field(metadata=dict(doc="gmsh .msh file with physical groups, relative to the config file"))
    degree: int = field(default=1, metadata=dict(check=one_of(1, 2), doc="Lagrange degree of the displacement"))
    quadrature_degree: Optional[int] = field(
        default=None, metadata=dict(check=in_range(1, 8), doc="quadrature degree; default 2*(degree-1), at least 1"))


@dataclass
class DirichletConfig:
    boundary: Tag = field(metadata=_boundary_doc())
    x: Optional[float] = field(default=None, metadata=dict(doc="prescribed x displacement [m] at load factor 1"))
    y: Optional[float] = field(default=None, metadata=dict(doc="prescribed y displacement [m] at load factor 1"))
    z: Optional[float] = field(default=None, metadata=dict(doc="prescribed z displacement [m] at load factor 1"))

    def validate(self) -> None:
        if self.x is None and self.y is None and self.z is None:
            raise ValueError(f"boundary {self.boundary!r}: give at least one of the components x, y, z")

    @property
    def components(self) -> dict[int, float]:
        return {i: v for i, v in enumerate((self.x, self.y, self.z)) if v is not None}


@dataclass
class TractionConfig:
    boundary: Tag = field(metadata=_boundary_doc())
    value: Optional[list[float]] = field(default=None, metadata=dict(doc="traction vector [Pa] at load factor 1"))
    pressure: Optional[float] = field(default=None, metadata=dict(doc="normal pressure [Pa] at load factor 1 (t = -p n)"))

    def validate(self) -> None:
        if (self.value is None) == (self.pressure is None):
            raise ValueError(f"boundary {self.boundary!r}: give exactly one of 'value' (3 numbers) or 'pressure'")
        if self.value is not None and len(self.value) != 3:
            raise ValueError(f"boundary {self.boundary!r}: 'value' must have 3 components, got {len(self.value)}")


@dataclass
class LoadConfig:
    times: list[float] = field(default_factory=lambda: [0.0, 1.0], metadata=dict(doc="load table times [s]"))
    factors: list[float] = field(default_factory=lambda: [0.0, 1.0], metadata=dict(doc="load factors at the times"))
    steps: Optional[int] = field(default=None, metadata=dict(check=positive, doc="number of uniform load steps"))
    max_dt: Optional[float] = field(default=None, metadata=dict(check=positive, doc="largest step [s]"))

    def validate(self) -> None:
        from fe2nn.macro.loading import LoadTable

        LoadTable(self.times, self.factors)  # raises ValueError with the reason
        if self.steps is not None and self.max_dt is not None:
            raise ValueError("give either 'steps' or 'max_dt', not both")


@dataclass
class SolverConfig:
    rtol: float = field(default=1e-8, metadata=dict(check=positive, doc="relative residual tolerance"))
    atol: float = field(default=1e-10, metadata=dict(check=non_negative, doc="absolute residual tolerance [N]"))
    max_iterations: int = field(default=25, metadata=dict(check=positive, doc="Newton iterations per step"))
    min_dt: Optional[float] = field(default=None, metadata=dict(check=positive, doc="smallest step after cut-backs [s]"))
    linear_solver: str = field(default="auto", metadata=dict(check=one_of("auto", "direct", "iterative")))
    predictor: str = field(default="extrapolate", metadata=dict(check=one_of("extrapolate", "none"), doc=(
        "initial guess of a step: continue the last converged increment, or start from it")))
    petsc_options: dict = field(default_factory=dict, metadata=dict(
        check=_petsc_values, doc="PETSc options (without '-') overriding the defaults, e.g. {ksp_rtol = 1e-9}"))

    def solve_kwargs(self) -> dict:
        """These settings as keyword arguments of :func:`fe2nn.macro.solver.solve`."""
        return {name: getattr(self, name) for name in
                ("rtol", "atol", "max_iterations", "min_dt", "linear_solver", "predictor", "petsc_options")}


@dataclass
class OutputConfig:
    dir: str = field(default="results", metadata=dict(doc="output directory, relative to the config file"))
    reaction: Optional[Tag] = field(default=None, metadata=_boundary_doc())
    vtx: bool = True
    every: int = field(default=1, metadata=dict(check=positive, doc="write fields every n-th step"))
    plot: bool = True
    checkpoint_every: int = field(default=0, metadata=dict(check=non_negative, doc=(
        "write <dir>/checkpoint/ after every n-th converged step, for `fe2nn solve --resume` (0: never); "
        "a finished run removes it")))
    strain_paths: bool = field(default=False, metadata=dict(
        doc="also write strain_paths.h5: the Mandel strain [-] at every quadrature point after every converged "
            "step, with the times [s] and point coordinates [m] (fe2nn.macro.history)"))


@dataclass
class SolveConfig:
    mesh: MeshConfig
    material: dict = field(metadata=dict(doc="material table with 'model' and its parameters"))
    load: LoadConfig = field(default_factory=LoadConfig)
    dirichlet: list[DirichletConfig] = field(default_factory=list)
    traction: list[TractionConfig] = field(default_factory=list)
    solver: SolverConfig = field(default_factory=SolverConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        if not self.dirichlet:
            raise ValueError("at least one [[dirichlet]] boundary condition is needed (rigid-body motion)")
