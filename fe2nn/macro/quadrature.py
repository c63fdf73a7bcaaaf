"""Quadrature-point fields: Mandel strain/stress (6), tangent (6x6) and scalar history.

All local (owned) cells are evaluated at once: one :class:`dolfinx.fem.Expression`
evaluation gives the strain at every quadrature point as an array (n, 6), and
stress/tangent arrays of shape (n, 6) / (n, 6, 6) are written back into the
quadrature Functions that the residual and Jacobian forms use.  Points are
ordered cell by cell (owned cells only), n = cells * points_per_cell.
"""
from __future__ import annotations

import math

import basix
import basix.ufl
import numpy as np
import ufl
from dolfinx import fem

_S2 = math.sqrt(2.0)


def mandel_strain(u) -> ufl.core.expr.Expr:
    """Mandel 6-vector (e11, e22, e33, sqrt2 e23, sqrt2 e13, sqrt2 e12) of sym(grad(u))."""
    e = ufl.sym(ufl.grad(u))
    return ufl.as_vector([e[0, 0], e[1, 1], e[2, 2], _S2 * e[1, 2], _S2 * e[0, 2], _S2 * e[0, 1]])


def mandel_to_tensor(m) -> ufl.core.expr.Expr:
    """3x3 symmetric tensor of a Mandel 6-vector (UFL)."""
    a = [m[0], m[1], m[2], m[3] / _S2, m[4] / _S2, m[5] / _S2]
    return ufl.as_matrix([[a[0], a[5], a[4]], [a[5], a[1], a[3]], [a[4], a[3], a[2]]])


class QuadratureFields:
    """Quadrature spaces and point-wise fields of a displacement Function ``u``.

    Attributes: ``stress`` (6-vector Function), ``tangent`` (6x6 Function),
    ``dx`` (the matching measure), ``n_points`` (local owned points),
    ``weights`` (reference quadrature weights of one cell).
    """

    def __init__(self, u: fem.Function, degree: int):
        mesh = u.function_space.mesh
        self.mesh, self.degree = mesh, degree
        cell = mesh.basix_cell()
        self.points, self.weights = basix.make_quadrature(cell, degree)
        self.points_per_cell = self.points.shape[0]
        tdim = mesh.topology.dim
        self.cells = np.arange(mesh.topology.index_map(tdim).size_local, dtype=np.int32)
        self.n_points = self.cells.size * self.points_per_cell
        self.dx = ufl.Measure("dx", domain=mesh,
                              metadata={"quadrature_degree": degree, "quadrature_scheme": "default"})
        self.V6 = self.space((6,))
        self.V66 = self.space((6, 6))
        self.stress = fem.Function(self.V6, name="stress_qp")
        self.tangent = fem.Function(self.V66, name="tangent_qp")
        self._strain_expr = fem.Expression(mandel_strain(u), self.points)
        # local dof (point) index of each (cell, point), owned cells only
        dofs = self.V6.dofmap.list[: self.cells.size].reshape(-1)
        self._rows = None if np.array_equal(dofs, np.arange(dofs.size)) else dofs

    def space(self, shape: tuple[int, ...]) -> fem.FunctionSpace:
        """Quadrature function space of value ``shape`` on this mesh and rule."""
        el = basix.ufl.quadrature_element(self.mesh.basix_cell(), value_shape=shape, scheme="default",
                                          degree=self.degree)
        return fem.functionspace(self.mesh, el)

    def strain(self) -> np.ndarray:
        """Mandel strain at all owned quadrature points, (n, 6) [-]."""
        vals = self._strain_expr.eval(self.mesh, self.cells)
        return vals.reshape(self.n_points, 6)

    def view(self, f: fem.Function) -> np.ndarray:
        """Owned point values of a quadrature Function as an (n, *shape) array (a copy if permuted)."""
        bs = f.function_space.dofmap.index_map_bs
        arr = f.x.array.reshape(-1, bs)
        out = arr[: self.n_points] if self._rows is None else arr[self._rows]
        return out

    def assign(self, f: fem.Function, values: np.ndarray) -> None:
        """Write point values (n, ...) into the owned entries of quadrature Function ``f``."""
        bs = f.function_space.dofmap.index_map_bs
        arr = f.x.array.reshape(-1, bs)
        vals = np.asarray(values, dtype=arr.dtype).reshape(self.n_points, bs)
        if self._rows is None:
            arr[: self.n_points] = vals
        else:
            arr[self._rows] = vals
