"""Macroscale problem definition: mesh with named boundaries, material, boundary conditions.

    from mpi4py import MPI
    from fe2nn.macro import Problem, read_mesh, solve
    from fe2nn.materials.j2 import J2Plasticity

    mesh = read_mesh("meshes/bar.msh")
    problem = Problem(mesh, J2Plasticity(E=200e9, nu=0.3, sigma_y=250e6), degree=1)
    problem.fix("xmin", x=0.0)                  # u_x = 0 * load factor
    problem.fix("xmax", x=1e-3)                 # u_x = 1 mm * load factor
    problem.traction("ymax", [0.0, 1e6, 0.0])   # t = 1 MPa * load factor
    result = solve(problem, times=[0, 1, 2], factors=[0, 1, 0], steps=20,
                   reaction="xmax", output="results/bar")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from mpi4py import MPI

from fe2nn.errors import UserError

Tag = int | str


# -- mesh ---------------------------------------------------------------------------------
@dataclass
class MeshInfo:
    """What a .msh file holds, read with gmsh alone (no DOLFINx): physical groups by dimension."""

    path: Path
    groups: Dict[int, Dict[str, int]]  # dim -> {name: tag}
    tags: Dict[int, List[int]]  # dim -> tags


def inspect_msh(path: str | Path, comm=MPI.COMM_WORLD) -> MeshInfo:
    """Check that ``path`` is a readable 3D gmsh mesh with physical groups (rank 0 reads, all get it).

    Raises UserError naming the file when it is missing, unreadable, or has no
    3D physical group.
    """
    path = Path(path)
    err, info = None, None
    if comm.rank == 0:
        try:
            info = _inspect_msh_local(path)
        except UserError as e:
            err = str(e)
    err, info = comm.bcast((err, info), root=0)
    if err:
        raise UserError(err)
    return info


def _inspect_msh_local(path: Path) -> MeshInfo:
    if not path.is_file():
        raise UserError(f"{path}: mesh file not found")
    try:
        with open(path, "rb") as fh:
            head = fh.read(11)
    except OSError as e:
        raise UserError(f"{path}: mesh file is not readable ({e.strerror})") from None
    if head != b"$MeshFormat":
        raise UserError(f"{path}: not a gmsh .msh file (expected '$MeshFormat' header)")
    import gmsh

    was = gmsh.isInitialized()
    if not was:
        gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    try:
        gmsh.model.add("fe2nn_inspect")
        try:
            gmsh.merge(str(path))
        except Exception as e:  # gmsh raises a bare Exception
            raise UserError(f"{path}: cannot read mesh ({str(e).splitlines()[0] if str(e) else 'gmsh error'})") from None
        groups: Dict[int, Dict[str, int]] = {0: {}, 1: {}, 2: {}, 3: {}}
        tags: Dict[int, List[int]] = {0: [], 1: [], 2: [], 3: []}
        for dim, tag in gmsh.model.getPhysicalGroups():
            tags[dim].append(tag)
            name = gmsh.model.getPhysicalName(dim, tag)
            if name:
                groups[dim][name] = tag
        if not tags[3]:
            raise UserError(f"{path}: mesh has no 3D physical group (tag the volume in gmsh)")
        return MeshInfo(path, groups, tags)
    finally:
        gmsh.model.remove()
        if not was:
            gmsh.finalize()


def resolve_boundary(info: MeshInfo, tag: Tag, where: str = "boundary") -> int:
    """Surface physical tag of a name or number; UserError listing the valid ones otherwise."""
    names = info.groups[2]
    if isinstance(tag, str) and tag in names:
        return names[tag]
    if isinstance(tag, int) and not isinstance(tag, bool) and tag in info.tags[2]:
        return tag
    valid = ", ".join([f"{n!r} ({t})" for n, t in sorted(names.items(), key=lambda x: x[1])]
                      + [str(t) for t in info.tags[2] if t not in names.values()])
    raise UserError(f"{where} = {tag!r} is not a surface physical group of mesh {info.path}; "
                    f"valid: {valid or 'none'}")


class Mesh:
    """A distributed DOLFINx mesh with its facet tags and physical names."""

    def __init__(self, mesh, facet_tags, info: MeshInfo):
        self.mesh, self.facet_tags, self.info = mesh, facet_tags, info

    @property
    def comm(self):
        return self.mesh.comm

    def boundary(self, tag: Tag, where: str = "boundary") -> int:
        return resolve_boundary(self.info, tag, where)

    def facets(self, tag: Tag, where: str = "boundary") -> np.ndarray:
        """Local facet indices of a tagged surface."""
        t = self.boundary(tag, where)
        return self.facet_tags.find(t)


def read_mesh(path: str | Path, comm=MPI.COMM_WORLD) -> Mesh:
    """Read a gmsh .msh file (rank 0 reads, the mesh is distributed over ``comm``)."""
    import gmsh
    from dolfinx.io import gmsh as dgmsh

    info = inspect_msh(path, comm)
    if comm.rank == 0:
        was = gmsh.isInitialized()
        if not was:
            gmsh.initialize(interruptible=False)
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("fe2nn_mesh")
        gmsh.merge(str(path))
        data = dgmsh.model_to_mesh(gmsh.model, comm, 0, gdim=3)
        gmsh.model.remove()
        if not was:
            gmsh.finalize()
    else:
        data = dgmsh.model_to_mesh(gmsh.model, comm, 0, gdim=3)
    mesh = data.mesh
    mesh.topology.create_connectivity(mesh.topology.dim - 1, mesh.topology.dim)
    return Mesh(mesh, data.facet_tags, info)


# -- problem -------------------------------------------------------------------------------
@dataclass
class Dirichlet:
    """Prescribed displacement on a tagged surface at load factor 1.

    ``components``: {component index: value [m]}, or ``function``: x (3, m) -> u (3, m)
    prescribing all three components (Python API only).
    """

    boundary: Tag
    components: Dict[int, float] = field(default_factory=dict)
    function: Optional[Callable[[np.ndarray], np.ndarray]] = None


@dataclass
class Traction:
    """Surface traction at load factor 1: a vector [Pa] or a normal pressure p (t = -p n)."""

    boundary: Tag
    value: Optional[Sequence[float]] = None
    pressure: Optional[float] = None


class Problem:
    """Small-strain quasi-static problem: mesh, material, Lagrange degree, BCs and loads.

    ``degree``: displacement Lagrange degree (1 or 2); ``quadrature_degree``:
    default on tetrahedra 2*(degree-1), at least 1 (exact for the stiffness of
    affine cells: 1 point for P1, 4 for P2), on hexahedra 2*degree (full Gauss).
    """

    def __init__(self, mesh: Mesh, material, degree: int = 1, quadrature_degree: Optional[int] = None):
        if degree not in (1, 2):
            raise ValueError(f"degree must be 1 or 2, got {degree}")
        self.mesh, self.material, self.degree = mesh, material, degree
        simplex = mesh.mesh.topology.cell_name() == "tetrahedron"
        default = max(1, 2 * (degree - 1)) if simplex else 2 * degree
        self.quadrature_degree = quadrature_degree or default
        self.dirichlet: List[Dirichlet] = []
        self.tractions: List[Traction] = []

    def fix(self, boundary: Tag, x: float | None = None, y: float | None = None, z: float | None = None,
            function: Callable[[np.ndarray], np.ndarray] | None = None) -> "Problem":
        """Prescribe displacement components [m] (times the load factor) on a tagged surface."""
        self.mesh.boundary(boundary, "dirichlet boundary")
        comps = {i: float(v) for i, v in enumerate((x, y, z)) if v is not None}
        if not comps and function is None:
            raise ValueError("fix(): give at least one component or a function")
        if comps and function is not None:
            raise ValueError("fix(): give components or a function, not both")
        self.dirichlet.append(Dirichlet(boundary, comps, function))
        return self

    def traction(self, boundary: Tag, value: Sequence[float]) -> "Problem":
        """Traction vector [Pa] (times the load factor) on a tagged surface."""
        self.mesh.boundary(boundary, "traction boundary")
        if len(value) != 3:
            raise ValueError("traction value must have 3 components")
        self.tractions.append(Traction(boundary, value=[float(v) for v in value]))
        return self

    def pressure(self, boundary: Tag, p: float) -> "Problem":
        """Normal pressure p [Pa] (times the load factor), t = -p n on a tagged surface."""
        self.mesh.boundary(boundary, "traction boundary")
        self.tractions.append(Traction(boundary, pressure=float(p)))
        return self
