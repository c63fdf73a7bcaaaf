"""Incremental Newton solver with the consistent tangent, state commit/rollback and cut-backs.

Per Newton iteration: one Expression evaluation of the strain at all owned
quadrature points, one batched ``material.update`` from the last converged
state, stress/tangent written into quadrature Functions, assembly of the
residual ``F_int - lambda F_ext`` and of the Jacobian (both forms compiled
once), one linear solve (MUMPS, or CG + GAMG with rigid-body near-null space).

Convergence: the force residual on the free dofs ``|R_free|`` [N] falls below
``atol`` or ``rtol * max(|F_int|, lambda |F_ext|)``, after the prescribed
displacements have been applied exactly.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import ufl
from dolfinx import fem
from dolfinx.fem import petsc as fpetsc
from mpi4py import MPI
from petsc4py import PETSc

from fe2nn import interrupt
from fe2nn.errors import SolverError
from fe2nn.io_utils import format_duration, rank0_print, time_left
from fe2nn.macro.loading import LoadTable
from fe2nn.macro.problem import Problem
from fe2nn.macro.quadrature import QuadratureFields, mandel_strain
from fe2nn.materials.base import MaterialConvergenceError

_counter = itertools.count()


class StepFailed(Exception):
    """A load step did not converge (the driver cuts the step back)."""


@dataclass
class StepRecord:
    """One converged load step."""

    step: int
    time: float  # [s]
    factor: float  # load factor [-]
    dt: float  # [s]
    displacement: np.ndarray  # mean displacement (3,) on the reaction boundary [m]
    reaction: np.ndarray  # reaction force (3,) on the reaction boundary [N]
    iterations: int
    residuals: List[float]  # |R_free| per iteration [N]
    reference: float  # force scale max(|F_int|, lambda |F_ext|) of the converged state [N]
    wall_time: float  # [s], with the failed attempts (cut-backs) before it
    timings: Dict[str, float] = field(default_factory=dict)  # constitutive / assembly / solve [s], the same
    cutbacks: int = 0
    evaluations: int = 0  # material updates at all points, the failed attempts' included (0: not recorded)


@dataclass
class Result:
    steps: List[StepRecord]
    solver: "NewtonSolver"

    @property
    def reactions(self) -> np.ndarray:
        return np.array([s.reaction for s in self.steps])

    @property
    def times(self) -> np.ndarray:
        return np.array([s.time for s in self.steps])


PREDICTORS = ("extrapolate", "none")


def default_petsc_options(kind: str) -> Dict[str, object]:
    if kind == "direct":
        return {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}
    return {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": 1e-10, "ksp_atol": 1e-30, "ksp_max_it": 1000,
            "pc_gamg_coarse_eq_limit": 1000, "mg_levels_ksp_type": "chebyshev", "mg_levels_pc_type": "jacobi",
            "mg_levels_esteig_ksp_type": "cg", "ksp_error_if_not_converged": True}


class NewtonSolver:
    """Owns the displacement, the quadrature fields, the PETSc objects and the material state.

    ``linear_solver``: "direct" (MUMPS), "iterative" (CG + GAMG) or "auto"
    (direct up to 150,000 dofs).  ``petsc_options`` override the defaults.
    ``line_search``: halve (up to 4 times) a Newton correction that increases |R|.
    ``predictor``: start of each step. "extrapolate" continues the last converged
    increment, scaled by the ratio of the load-factor increments, when the load keeps
    its direction (else, and at the first step, as "none"); "none" starts from the
    converged displacement and lifts the BC increment with the tangent there.  For
    rate-dependent laws the tangent at a zero increment is a poor predictor, so
    "extrapolate" saves most of the Newton iterations on smooth load paths.
    ``reaction``: tagged surface whose reaction force and mean displacement are reported.
    """

    def __init__(self, problem: Problem, rtol: float = 1e-8, atol: float = 1e-10, max_iterations: int = 25,
                 linear_solver: str = "auto", petsc_options: Optional[Dict[str, object]] = None,
                 reaction=None, line_search: bool = True, predictor: str = "extrapolate"):
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor = {predictor!r}: expected one of {', '.join(PREDICTORS)}")
        self.problem = problem
        self.line_search = line_search
        self.predictor = predictor
        self.material = problem.material
        self.rtol, self.atol, self.max_iterations = rtol, atol, max_iterations
        mesh = problem.mesh.mesh
        self.comm = mesh.comm
        self.V = fem.functionspace(mesh, ("Lagrange", problem.degree, (3,)))
        self.u = fem.Function(self.V, name="displacement")
        self.du = fem.Function(self.V)
        self.qf = QuadratureFields(self.u, problem.quadrature_degree)
        v, w = ufl.TestFunction(self.V), ufl.TrialFunction(self.V)
        dx = self.qf.dx
        self.F_form = fem.form(ufl.inner(self.qf.stress, mandel_strain(v)) * dx)
        self.J_form = fem.form(ufl.inner(ufl.dot(self.qf.tangent, mandel_strain(w)), mandel_strain(v)) * dx)
        imap = self.V.dofmap.index_map
        self.bs = self.V.dofmap.index_map_bs
        self.n_owned = imap.size_local * self.bs
        self.n_dofs = imap.size_global * self.bs
        self._setup_bcs()
        self._setup_external(v)
        self._setup_reaction(reaction)
        self.A = fpetsc.create_matrix(self.J_form)
        self.b = fpetsc.create_vector(self.V)
        self._setup_ksp(linear_solver, petsc_options or {})
        self.state = self.material.initial_state(self.qf.n_points)
        self.trial_state = self.state
        self.u_committed = self.u.x.array.copy()
        self.factor = self._committed_factor = 0.0
        self._increment: Optional[tuple[np.ndarray, float]] = None  # last converged (du, dfactor)
        self.f_int = np.zeros(self.n_owned)
        self.timings = {"constitutive": 0.0, "assembly": 0.0, "solve": 0.0}
        self.evaluations = 0  # material updates (evaluate_material calls)
        self._tangent_pending: Optional[tuple] = None  # (strain, dt) of a tangent the material left for later

    # -- set-up ----------------------------------------------------------------------------
    def _setup_bcs(self) -> None:
        mesh = self.problem.mesh
        fdim = mesh.mesh.topology.dim - 1
        self.bcs, self._bc_values = [], []
        mask = np.zeros(self.V.dofmap.index_map.size_local * self.bs + self.V.dofmap.index_map.num_ghosts * self.bs,
                        dtype=bool)
        for d in self.problem.dirichlet:
            facets = mesh.facets(d.boundary, "dirichlet boundary")
            if d.function is not None:
                g = fem.Function(self.V)
                g.interpolate(d.function)
                ref = g.x.array.copy()
                dofs = fem.locate_dofs_topological(self.V, fdim, facets)
                self.bcs.append(fem.dirichletbc(g, dofs))
                self._bc_values.append((g, ref))
                for k in range(self.bs):
                    mask[dofs * self.bs + k] = True
            for i, value in d.components.items():
                Vi, _ = self.V.sub(i).collapse()
                g = fem.Function(Vi)
                dofs = fem.locate_dofs_topological((self.V.sub(i), Vi), fdim, facets)
                self.bcs.append(fem.dirichletbc(g, dofs, self.V.sub(i)))
                self._bc_values.append((g, value))
                mask[dofs[0]] = True
        self.bc_mask = mask[: self.n_owned]

    def _setup_external(self, v) -> None:
        mesh = self.problem.mesh
        self.f_ext = np.zeros(self.n_owned)
        if not self.problem.tractions:
            return
        ds = ufl.Measure("ds", domain=mesh.mesh, subdomain_data=mesh.facet_tags)
        n = ufl.FacetNormal(mesh.mesh)
        L = 0
        for t in self.problem.tractions:
            tag = mesh.boundary(t.boundary, "traction boundary")
            if t.pressure is not None:
                L += -fem.Constant(mesh.mesh, PETSc.ScalarType(t.pressure)) * ufl.dot(n, v) * ds(tag)
            else:
                L += ufl.dot(fem.Constant(mesh.mesh, np.asarray(t.value, dtype=PETSc.ScalarType)), v) * ds(tag)
        vec = fem.assemble_vector(fem.form(L))
        vec.scatter_reverse(__import__("dolfinx").la.InsertMode.add)
        self.f_ext = vec.array[: self.n_owned].copy()

    def _setup_reaction(self, reaction) -> None:
        self.reaction_boundary = reaction
        self._reaction_dofs = []
        self._mean_u_forms = []
        self._reaction_area = 1.0
        if reaction is None:
            return
        mesh = self.problem.mesh
        fdim = mesh.mesh.topology.dim - 1
        tag = mesh.boundary(reaction, "reaction boundary")
        facets = mesh.facet_tags.find(tag)
        for i in range(self.bs):
            Vi, _ = self.V.sub(i).collapse()
            dofs = fem.locate_dofs_topological((self.V.sub(i), Vi), fdim, facets)[0]
            self._reaction_dofs.append(dofs[dofs < self.n_owned])
        ds = ufl.Measure("ds", domain=mesh.mesh, subdomain_data=mesh.facet_tags)
        one = fem.Constant(mesh.mesh, PETSc.ScalarType(1.0))
        self._reaction_area = self.comm.allreduce(fem.assemble_scalar(fem.form(one * ds(tag))), op=MPI.SUM)
        self._mean_u_forms = [fem.form(self.u[i] * ds(tag)) for i in range(self.bs)]

    def _setup_ksp(self, kind: str, overrides: Dict[str, object]) -> None:
        if kind == "auto":
            kind = "direct" if self.n_dofs <= 150_000 else "iterative"
        self.linear_solver = kind
        opts = default_petsc_options(kind)
        opts.update(overrides)
        self.petsc_options = opts
        prefix = f"fe2nn_macro_{next(_counter)}_"
        self.ksp = PETSc.KSP().create(self.comm)
        self.ksp.setOptionsPrefix(prefix)
        self.ksp.setOperators(self.A)
        po = PETSc.Options()
        for k, val in opts.items():
            po[prefix + k] = ("true" if val else "false") if isinstance(val, bool) else val
        if str(opts.get("pc_type")) == "gamg":
            self.A.setNearNullSpace(self._rigid_body_modes())
        self.ksp.setFromOptions()
        for k in opts:
            del po[prefix + k]

    def _rigid_body_modes(self) -> PETSc.NullSpace:
        x = self.V.tabulate_dof_coordinates()[: self.n_owned // self.bs]
        vecs = [fpetsc.create_vector(self.V) for _ in range(6)]
        arrs = [np.zeros((x.shape[0], 3)) for _ in range(6)]
        for i in range(3):
            arrs[i][:, i] = 1.0
        arrs[3][:, 0], arrs[3][:, 1] = -x[:, 1], x[:, 0]
        arrs[4][:, 1], arrs[4][:, 2] = -x[:, 2], x[:, 1]
        arrs[5][:, 0], arrs[5][:, 2] = x[:, 2], -x[:, 0]
        for vec, arr in zip(vecs, arrs):
            vec.array_w[:] = arr.reshape(-1)
        for i, vi in enumerate(vecs):  # Gram-Schmidt
            for vj in vecs[:i]:
                vi.axpy(-vi.dot(vj), vj)
            vi.normalize()
        return PETSc.NullSpace().create(vectors=vecs, comm=self.comm)

    # -- pieces of a Newton iteration -------------------------------------------------------
    def set_load(self, factor: float) -> None:
        """Prescribed displacements at load factor ``factor``."""
        for g, value in self._bc_values:
            g.x.array[:] = factor * value
        self.factor = factor

    def evaluate_material(self, dt: float) -> None:
        """Strain at all points -> batched material update from the committed state -> stress field
        (and the tangent field, where the material gives it with the stress; else see
        :meth:`evaluate_tangent`)."""
        t0 = time.perf_counter()
        strain = self.qf.strain()
        eps = torch.from_numpy(strain).to(self.material.device)
        stress, self.trial_state, tangent = self.material.stress_update(eps, dt, self.state)
        self.qf.assign(self.qf.stress, stress.detach().cpu().numpy())
        self._tangent_pending = (eps, dt) if tangent is None else None
        if tangent is not None:
            self.qf.assign(self.qf.tangent, tangent.detach().cpu().numpy())
        self.timings["constitutive"] += time.perf_counter() - t0
        self.evaluations += 1

    def evaluate_tangent(self) -> None:
        """The tangent field at the last evaluated strain, if the material left it for later
        (a converged state never needs it)."""
        if self._tangent_pending is None:
            return
        t0 = time.perf_counter()
        eps, dt = self._tangent_pending
        tangent = self.material.tangent(eps, dt, self.state)
        self.qf.assign(self.qf.tangent, tangent.detach().cpu().numpy())
        self._tangent_pending = None
        self.timings["constitutive"] += time.perf_counter() - t0

    def assemble_internal(self) -> None:
        """Internal force vector F_int (owned entries in ``self.f_int``)."""
        t0 = time.perf_counter()
        with self.b.localForm() as loc:
            loc.set(0.0)
        fpetsc.assemble_vector(self.b, self.F_form)
        self.b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        self.f_int[:] = self.b.array_r
        self.timings["assembly"] += time.perf_counter() - t0

    def _norm(self, a: np.ndarray) -> float:
        return math.sqrt(self.comm.allreduce(float(np.dot(a, a)), op=MPI.SUM))

    def residual_norms(self) -> tuple[float, float]:
        """(|R_free|, reference force) [N]."""
        r = self.f_int - self.factor * self.f_ext
        r_free = np.where(self.bc_mask, 0.0, r)
        ref = max(self._norm(self.f_int), abs(self.factor) * self._norm(self.f_ext))
        return self._norm(r_free), ref

    def bc_jump(self) -> float:
        """Largest |g - u| over the prescribed dofs [m]."""
        w = fem.Function(self.V)
        w.x.array[:] = self.u.x.array
        for bc in self.bcs:
            bc.set(w.x.array)
        return self.comm.allreduce(float(np.max(np.abs(w.x.array - self.u.x.array), initial=0.0)), op=MPI.MAX)

    def newton_update(self, first: bool) -> None:
        """Assemble J, solve J du = R (lifted with the BC increment on the first iteration), u -= du."""
        self.evaluate_tangent()
        t0 = time.perf_counter()
        self.A.zeroEntries()
        fpetsc.assemble_matrix(self.A, self.J_form, bcs=self.bcs, diag=1.0)
        self.A.assemble()
        with self.b.localForm() as loc:
            loc.set(0.0)
        self.b.array_w[:] = self.f_int - self.factor * self.f_ext
        x0 = self.u.x.petsc_vec
        if first:
            fpetsc.apply_lifting(self.b, [self.J_form], bcs=[self.bcs], x0=[x0], alpha=-1.0)
            self.b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        fpetsc.set_bc(self.b, self.bcs, x0=x0, alpha=-1.0)
        t1 = time.perf_counter()
        self.timings["assembly"] += t1 - t0
        self.ksp.solve(self.b, self.du.x.petsc_vec)
        reason = self.ksp.getConvergedReason()
        self.timings["solve"] += time.perf_counter() - t1
        if reason < 0:
            raise StepFailed(f"linear solver failed (PETSc reason {reason})")
        self.du.x.scatter_forward()
        self.u.x.array[:] -= self.du.x.array
        if first:  # make the prescribed values exact (iterative solvers leave a tiny error)
            for bc in self.bcs:
                bc.set(self.u.x.array)

    # -- a load step ------------------------------------------------------------------------
    def step(self, factor: float, dt: float) -> List[float]:
        """Newton iterations to equilibrium at load ``factor``; returns |R_free| per iteration.

        Raises StepFailed (max iterations, divergence, material failure); the
        caller then calls :meth:`rollback`.
        """
        moved = self._predict(factor)
        self.set_load(factor)
        if moved:  # the prescribed values are linear in the factor: make them exact
            for bc in self.bcs:
                bc.set(self.u.x.array)
        residuals: List[float] = []
        jump = self.bc_jump()
        first_searched = 2 if jump > 0.0 else 1
        k, alpha = 0, 1.0
        while True:
            r, ref = self._equilibrium(dt)
            # backtracking line search: halve a Newton correction that raised |R|
            # (never the BC-lifting first correction, whose |R| before excludes the BC jump)
            if self.line_search and k >= first_searched and r > residuals[-1] and alpha > 1.0 / 16:
                alpha /= 2
                self.u.x.array[:] += alpha * self.du.x.array
                continue
            residuals.append(r)
            self.reference = ref
            if (k > 0 or jump == 0.0) and (r <= self.atol or r <= self.rtol * ref):
                self.residuals = residuals
                return residuals
            if k == self.max_iterations:
                break
            if k >= 3 and r > 1e3 * max(residuals[1], 1e-300):
                raise StepFailed(f"Newton diverges (|R| = {r:.3e} N after {k} iterations)")
            self.newton_update(first=(k == 0 and jump > 0.0))
            k, alpha = k + 1, 1.0
        raise StepFailed(f"no convergence in {self.max_iterations} Newton iterations (|R| = {residuals[-1]:.3e} N)")

    def _equilibrium(self, dt: float) -> tuple[float, float]:
        """Material update and internal forces at the current u; (|R_free|, reference) [N]."""
        failure = None
        try:
            self.evaluate_material(dt)
        except MaterialConvergenceError as err:
            failure = str(err).splitlines()[0] if str(err) else "MaterialConvergenceError"
        failures = self.comm.allgather(failure)  # collective: every rank cuts back together
        if any(f is not None for f in failures):
            raise StepFailed(f"material update failed: {next(f for f in failures if f is not None)}")
        self.assemble_internal()
        r, ref = self.residual_norms()
        if not math.isfinite(r):
            raise StepFailed("residual is not finite")
        return r, ref

    def _predict(self, factor: float) -> bool:
        """Extrapolated initial guess of the step to ``factor`` (see ``predictor``).

        u is the committed state on entry; returns whether u was moved.
        """
        if self.predictor != "extrapolate" or self._increment is None:
            return False
        du, dlam = self._increment
        ratio = (factor - self._committed_factor) / dlam
        if not 0.0 < ratio <= 4.0:  # reversal, hold or a jump in step size: no trend to follow
            return False
        self.u.x.array[:] = self.u_committed + ratio * du
        return True

    def diagnose(self) -> str:
        """Why the last material evaluation may keep Newton from converging, as a phrase ("" when
        nothing stands out); collective.  Counts, over all ranks, the points whose tangent at the
        last iterate is not positive definite (smallest eigenvalue of its symmetric part <= 1e-9
        times its largest, so that a perfectly plastic direction with a zero eigenvalue counts
        whatever its rounding: no stiffness left or softening, where the deformation can localize)
        and, for a material with a training envelope, the points outside it by cause."""
        from fe2nn.fe2 import OOD_CAUSES, OOD_KEY, point_info_counts

        try:
            self.evaluate_tangent()
        except Exception:  # noqa: BLE001 - a diagnosis must not replace the failure it explains
            pass
        C = np.asarray(self.qf.view(self.qf.tangent)).reshape(-1, 6, 6)
        soft = 0
        if C.size:
            lam = np.linalg.eigvalsh(0.5 * (C + C.transpose(0, 2, 1)))
            soft = int(np.count_nonzero(lam[:, 0] <= 1e-9 * np.abs(lam).max(axis=1)))
        soft = int(self.comm.allreduce(soft, op=MPI.SUM))
        total = int(self.comm.allreduce(self.qf.n_points, op=MPI.SUM))
        counts = point_info_counts(self.material, self.qf.n_points, self.comm)
        parts = []
        if counts.get(OOD_KEY, 0):
            causes = ", ".join(f"{cause} {counts.get(key, 0)}" for cause, key in OOD_CAUSES.items())
            parts.append(f"{counts[OOD_KEY]} of {total} points outside the surrogate's training envelope "
                         f"({causes})")
        if soft:
            parts.append(f"{soft} of {total} points with a tangent that is not positive definite "
                         f"(no stiffness left, or softening, in some direction: the deformation can localize there)")
        return "; ".join(parts)

    def commit(self) -> None:
        self.state = self.trial_state
        dlam = self.factor - self._committed_factor
        self._increment = (self.u.x.array - self.u_committed, dlam) if dlam != 0.0 else None
        self._committed_factor = self.factor
        self.u_committed[:] = self.u.x.array

    def rollback(self) -> None:
        self.trial_state = self.state
        self.u.x.array[:] = self.u_committed
        self.factor = self._committed_factor

    # -- results ----------------------------------------------------------------------------
    def reaction(self) -> np.ndarray:
        """Reaction force (3,) [N] on the reaction boundary: internal forces summed over its dofs."""
        loc = np.array([self.f_int[d].sum() for d in self._reaction_dofs]) if self._reaction_dofs else np.zeros(3)
        return self.comm.allreduce(loc, op=MPI.SUM)

    def mean_displacement(self) -> np.ndarray:
        """Area-averaged displacement (3,) [m] over the reaction boundary."""
        if not self._mean_u_forms:
            return np.zeros(3)
        loc = np.array([fem.assemble_scalar(f) for f in self._mean_u_forms])
        return self.comm.allreduce(loc, op=MPI.SUM) / self._reaction_area

    def destroy(self) -> None:
        for obj in (self.ksp, self.A, self.b):
            obj.destroy()


def solve(problem: Problem, times=(0.0, 1.0), factors=(0.0, 1.0), steps: Optional[int] = None,
          max_dt: Optional[float] = None, min_dt: Optional[float] = None, reaction=None, output=None,
          rtol: float = 1e-8, atol: float = 1e-10, max_iterations: int = 25, linear_solver: str = "auto",
          petsc_options: Optional[Dict[str, object]] = None, vtx: bool = True, every: int = 1,
          plot: bool = True, progress: bool = True, predictor: str = "extrapolate",
          callback: Union[None, Callable[[NewtonSolver, StepRecord], None],
                          Sequence[Callable[[NewtonSolver, StepRecord], None]]] = None,
          checkpoint=None, resume: bool = False, substeps: int = 1) -> Result:
    """Run the load history ``(times, factors)`` with cut-backs; returns the converged steps.

    ``steps``, ``max_dt``, ``substeps``: the nominal steps (:meth:`LoadTable.step_times`).
    ``output``: directory for VTX fields, steps.csv and the force-displacement
    plot (None: no files).  A step that fails is retried with half the step
    size down to ``min_dt`` (default: smallest nominal step / 1024), then
    SolverError is raised (the output of the converged steps is still written).
    ``callback``: one callable or a list, each called as ``f(solver, record)`` after every
    converged step (on every rank).
    ``checkpoint``: a :class:`~fe2nn.macro.checkpoint.Checkpoint`, written after every
    ``checkpoint.every``-th converged step and removed when the run finishes; ``resume``: start
    from it instead of the undeformed state (the callbacks and the output writer get their
    history back when they take part in checkpoints).
    Inside :func:`fe2nn.interrupt.graceful_stop` (the command line), a SIGTERM stops the run after
    the step in progress: the checkpoint is written (when ``checkpoint.every`` > 0), the output
    closed, and :class:`fe2nn.interrupt.Interrupted` raised.
    """
    if resume and checkpoint is None:
        raise ValueError("resume needs a checkpoint")
    table = LoadTable(times, factors)
    callbacks = list(callback) if isinstance(callback, (list, tuple)) else [callback] if callback else []
    solver = NewtonSolver(problem, rtol=rtol, atol=atol, max_iterations=max_iterations,
                          linear_solver=linear_solver, petsc_options=petsc_options, reaction=reaction,
                          predictor=predictor)
    targets = table.step_times(steps, max_dt, substeps)
    nominal = np.diff([table.start] + targets)
    min_dt = float(min_dt if min_dt is not None else nominal.min() / 1024)
    records: List[StepRecord] = []
    t, i, dt, cut = table.start, 0, None, 0
    saved = None
    if checkpoint is not None and resume:  # checked before anything is written
        saved = checkpoint.load()
        checkpoint.restore_solver(solver, saved)
        t, i, dt = saved["loop"]["t"], saved["loop"]["i"], saved["loop"]["dt"]
    writer = None
    if output is not None:
        from fe2nn.macro.output import OutputWriter

        writer = OutputWriter(output, solver, vtx=vtx, plot=plot, initial_frame=saved is None,
                              keep_frames=checkpoint is not None and checkpoint.every > 0)
    parts = [p for p in ([writer] + callbacks) if hasattr(p, "checkpoint_name")]
    if saved is not None:
        try:
            records = checkpoint.restore_parts(solver, saved, parts)
        except BaseException:  # refused: this run leaves no output of its own
            if writer is not None:
                writer.discard()
            raise
        if progress:
            moved = f" (written on {checkpoint.moved_from} rank(s), moved onto {solver.comm.size})" \
                if checkpoint.moved_from is not None else ""
            rank0_print(f"resuming after step {len(records)} at t = {t:.6g} s from {checkpoint.dir}{moved}",
                        comm=solver.comm)
    span = table.end - table.start
    failure = None
    t_start, wall_start = t, time.perf_counter()  # for the remaining time in the progress lines
    try:
        while i < len(targets):
            target = targets[i]
            dt_try = target - t if dt is None else min(dt, target - t)
            t_new = target if target - (t + dt_try) <= 1e-12 * span else t + dt_try
            dt_try = t_new - t
            lam = table(t_new)
            if cut == 0:  # a new step: its record counts the failed attempts (cut-backs) before it too
                before, n0 = dict(solver.timings), solver.evaluations
                w0 = time.perf_counter()
            try:
                residuals = solver.step(lam, dt_try)
            except StepFailed as err:
                dt, cut = dt_try / 2, cut + 1
                if dt < min_dt:
                    why = solver.diagnose()  # collective; before the rollback (last iterate)
                    solver.rollback()
                    raise SolverError(f"load step to t = {t_new:.6g} s (load factor {lam:.6g}) failed: {err}; "
                                      f"the step size would fall below min_dt = {min_dt:.3g} s"
                                      + (f"; at the last iterate {why}" if why else "")) from None
                why = solver.diagnose() if progress else ""  # collective (progress is the same on every rank)
                solver.rollback()
                if progress:
                    rank0_print(f"  cut back at t = {t_new:.6g} s: {err}" + (f"; {why}" if why else "")
                                + f"; retrying with dt = {dt:.4g} s", comm=solver.comm)
                continue
            solver.commit()
            t = t_new
            rec = StepRecord(step=len(records) + 1, time=t, factor=lam, dt=dt_try,
                             displacement=solver.mean_displacement(), reaction=solver.reaction(),
                             iterations=len(residuals) - 1, residuals=residuals, reference=solver.reference,
                             wall_time=time.perf_counter() - w0,
                             timings={k: solver.timings[k] - before[k] for k in before}, cutbacks=cut,
                             evaluations=solver.evaluations - n0)
            records.append(rec)
            if progress:
                R = rec.reaction
                rank0_print(f"step {rec.step:4d}  t = {t:.5g} s  load = {lam:+.5f}  it = {rec.iterations:2d}  "
                            f"|R| = {residuals[-1]:.2e} N  reaction = ({R[0]:+.5e}, {R[1]:+.5e}, {R[2]:+.5e}) N  "
                            f"{format_duration(rec.wall_time)}"
                            + time_left(time.perf_counter() - wall_start, t - t_start, table.end - t),
                            comm=solver.comm)
            if writer is not None:
                writer.write_step(rec, fields=(rec.step % every == 0 or t == targets[-1]))
            for call in callbacks:
                call(solver, rec)
            cut = 0
            if t == target:
                i += 1
            if dt is not None:
                dt = 2 * dt_try
            if checkpoint is not None and checkpoint.due(rec.step):
                checkpoint.save(solver, records, {"t": t, "i": i, "dt": dt}, parts)
            stop = interrupt.requested(solver.comm)  # collective: every rank stops after this step
            if stop and i < len(targets):  # (after the last step the run just finishes)
                if checkpoint is not None and checkpoint.every > 0 and checkpoint.last_step != rec.step:
                    checkpoint.save(solver, records, {"t": t, "i": i, "dt": dt}, parts)
                kept = checkpoint.last_step if checkpoint is not None else 0  # 0 also when writing failed
                raise interrupt.Interrupted(
                    f"stopped by {stop} after step {rec.step} (t = {t:.6g} s, load factor {lam:.6g}); "
                    + (f"the checkpoint of step {kept} is in {checkpoint.dir}: continue with --resume" if kept
                       else "no checkpoint was written ([output] checkpoint_every), so the run cannot be resumed"))
    except SolverError as err:
        failure = err
    finally:
        if writer is not None:
            writer.close(records)
    if failure is not None:
        if checkpoint is not None and checkpoint.last_step:
            raise SolverError(f"{failure}; the checkpoint of step {checkpoint.last_step} is in {checkpoint.dir}: "
                              f"change [solver] (e.g. min_dt, max_iterations) and continue with --resume") from None
        raise failure
    if checkpoint is not None:
        checkpoint.remove()
    return Result(records, solver)
