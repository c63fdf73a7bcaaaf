"""``fe2nn validate CONFIG``: the same structural problem with the surrogate and with the full RVE.

The config is a ``fe2nn solve`` config whose ``[material]`` is the surrogate
(``model = "rno"``) plus a ``[validate]`` table::

    [validate]
    stress_steps = [10, 20, 30]   # steps at which the stress fields are compared ([] = every step)
    # refine = 4                  # optional: both solved again at 4 x the steps (step-size check)
    # [validate.reference]        # optional reference material table; default: the [material]
    # model = "rve"               # table with model = "rve" (the RVE keys given next to the
    # solver = "fft"              # surrogate), i.e. the RVE the surrogate was trained on

Both solves run in the same process on the same mesh partition (so the quadrature
points match one to one), under ``mpirun`` too.  Written to ``[output].dir``:
``surrogate/`` and ``reference/`` (each a full ``fe2nn solve`` output, its ``run.json`` naming the run
and its material), ``force_displacement.png`` (overlay), ``report.json`` and ``report.md`` (atomic).
With ``[output] checkpoint_every = N`` the reference solve writes checkpoints
(``reference/checkpoint/``); ``--resume`` runs the surrogate again and continues the reference.

Metrics (all defined over the converged steps at times present in both runs):

* reaction deviation: ``max_t |R_sur(t) - R_ref(t)| / max_t |R_ref(t)|`` with R the
  reaction force vector [N] on ``[output].reaction`` and |.| the Euclidean norm;
* stress L2 difference at step t: ``sqrt(sum_q w_q |s_sur - s_ref|^2 / sum_q w_q |s_ref|^2)``
  over all quadrature points q (all ranks), w_q = quadrature weight x |det J| [m^3],
  |.| the Mandel (= tensor Frobenius) norm -- the relative L2(Omega) error of the stress;
* Newton iterations per step, wall times of each solve (max over ranks, set-up
  excluded) and the speedup ``wall_ref / wall_sur``; also the constitutive time alone.

With ``refine = N`` both problems are solved again with every step split into N (``surrogate_refined/``,
``reference_refined/``).  The reference integrates each step implicitly, so its answer carries a
step-size error of its own; the report gives it (the reference against the refined reference), the
surrogate's change, and the surrogate against the reference with both refined, by the metrics above
at the times of the config's steps.  Where the reference's own error is half the deviation or
more, the comparison at the config's steps does not resolve the surrogate's error.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from fe2nn.config import add_override_argument, load_toml, parse, resolve_path
from fe2nn.errors import UserError
from fe2nn.io_utils import Spool, pyplot, rank0_print, save_figure, write_text_atomic
from fe2nn.macro.checkpoint import Growing


@dataclass
class ValidateConfig:
    reference: dict = field(default_factory=dict, metadata=dict(
        doc="reference material table (default: [material] with model = 'rve')"))
    stress_steps: List[int] = field(default_factory=list, metadata=dict(
        doc="steps (1-based) at which the stress fields are compared; [] = every step"))
    max_reaction_deviation: float = field(default=0.03, metadata=dict(
        doc="target for the reaction deviation (reported as pass/fail)"))
    refine: int = field(default=1, metadata=dict(
        check=lambda v: None if v >= 1 else "must be >= 1", doc=(
            "N > 1: solve both again with every load step split into N equal steps and report "
            "the reference's own step error (its answer against the refined one), the surrogate's change "
            "and the surrogate against the reference with both refined")))


def load(path: str | Path, overrides: Sequence[str] = ()):
    """(SolveConfig, ValidateConfig) of a validation config; one-line errors.  ``overrides``:
    ``KEY=VALUE`` strings (``--set``)."""
    from fe2nn.macro.config import SolveConfig

    file = str(path)
    data = load_toml(path, overrides)
    if "validate" not in data:
        raise UserError(f"{file}: missing table '[validate]' (e.g. [validate] stress_steps = [10, 20]; "
                        "the reference is [material] with model = 'rve' unless [validate.reference] is given)")
    vdata = data.pop("validate")
    if not isinstance(vdata, dict):
        raise UserError(f"{file}: 'validate' must be a table")
    vcfg = parse(ValidateConfig, vdata, file, "validate")
    for s in vcfg.stress_steps:
        if s < 1:
            raise UserError(f"{file}: key 'validate.stress_steps' must hold step numbers >= 1, got {s}")
    scfg = parse(SolveConfig, data, file)
    if not vcfg.reference:
        vcfg.reference = dict(scfg.material, model="rve")
    if scfg.output.reaction is None:
        raise UserError(f"{file}: key 'output.reaction' is required by validate (the compared reaction force)")
    return scfg, vcfg


def refined(cfg, factor: int):
    """A copy of the solve config ``cfg`` for a run with every load step split into ``factor``
    (:func:`_run`'s ``substeps``), writing its fields at the same times (``output.every`` x factor)."""
    import copy

    fine = copy.deepcopy(cfg)
    fine.output.every = cfg.output.every * factor
    return fine


class _Fields(Mapping):
    """Stress fields of this rank by time [s], (n_points, 6) [Pa] each, kept in a :class:`Spool`
    (a temporary file, not memory) and read back when asked for: with ``stress_steps = []`` (every
    step compared) a run's fields would otherwise all stay in memory, four runs with ``refine``."""

    def __init__(self) -> None:
        self._row: Dict[float, int] = {}
        self._spool: Optional[Spool] = None

    def add(self, t: float, stress: np.ndarray) -> None:
        """Append the field at time ``t`` (each time once, so rows follow the order of the times)."""
        if t in self._row:
            raise ValueError(f"a stress field at t = {t} s is recorded already")
        if self._spool is None:
            self._spool = Spool(stress.shape, "fe2nn-validate-")
        self._row[t] = len(self._spool)
        self._spool.append(stress)

    def __getitem__(self, t: float) -> np.ndarray:
        i = self._row[t]
        return self._spool.read(i, i + 1)[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """The fields of the times [start, stop) in recording order, (stop - start, n_points, 6)."""
        return self._spool.read(start, stop)

    def __iter__(self) -> Iterator[float]:
        return iter(self._row)

    def __len__(self) -> int:
        return len(self._row)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


class _Recorder:
    """solve() callback: OOD counts and the quadrature-point stresses of the chosen steps (kept in a
    temporary file, :class:`_Fields`; ``close()`` when done with them)."""

    #: name of this part of a solve checkpoint (fe2nn.macro.checkpoint)
    checkpoint_name = "validate"
    #: how the arrays of its checkpoint segments lie on a rank (axis 1)
    checkpoint_kinds = {"stress": "points"}

    def __init__(self, steps: Optional[set], times: Optional[set] = None):
        from fe2nn.fe2 import OODMonitor

        self.steps, self.times = steps, times
        self.ood = OODMonitor()
        self.stress = _Fields()
        self.weights = None
        self._saved = Growing()  # stress fields in checkpoint segments

    def __call__(self, solver, rec) -> None:
        self.ood(solver, rec)
        if self.weights is None:
            from fe2nn.fe2 import point_weights

            self.weights = point_weights(solver.qf)
        t = round(rec.time, 12)
        if self.times is not None and t in self.times or self.times is None and (
                self.steps is None or rec.step in self.steps):
            self.stress.add(t, np.asarray(solver.qf.view(solver.qf.stress), dtype=float).reshape(-1, 6))

    def close(self) -> None:
        self.stress.close()

    def checkpoint_meta(self) -> Dict[str, Any]:
        return {"ood": self.ood.checkpoint_meta()}

    def checkpoint_segment(self) -> Dict[str, Any]:
        """The stress fields recorded since the last checkpoint, with their times, and the OOD
        counts of the steps since then."""
        out: Dict[str, Any] = {}
        ood = self.ood.checkpoint_segment()
        if ood:
            out["ood"] = ood
        times = list(self.stress)
        new = self._saved.new(len(times))
        if new is not None:
            out.update(times=np.array(times[new]), stress=self.stress.rows(new.start, new.stop))
        return out

    def segment_written(self) -> None:
        self.ood.segment_written()
        self._saved.written()

    def restore_checkpoint(self, meta: Dict[str, Any], solver) -> None:
        from fe2nn.fe2 import point_weights

        self.stress.close()
        self.stress = _Fields()
        self.ood.restore_checkpoint(meta["ood"])
        self.weights = point_weights(solver.qf)

    def restore_segment(self, segment: Dict[str, Any]) -> None:
        if "ood" in segment:
            self.ood.restore_segment(segment["ood"])
        for t, s in zip(segment.get("times", ()), segment.get("stress", ())):
            self.stress.add(float(t), s)
        self._saved.restored(len(self.stress))


def _run(cfg, mesh, material, out: Path, steps, progress: bool, comm, checkpoint=None, resume: bool = False,
         times: Optional[set] = None, substeps: int = 1, record: Optional[Callable[[Path, dict], None]] = None):
    """One solve, each load step split into ``substeps``; the stress fields are recorded at the step
    numbers ``steps`` (None: all), or at the times ``times`` [s] (rounded to 1e-12) where given.
    ``record(out, outcome)`` writes the run's ``run.json`` when the solve ends or stops (not when a
    checkpoint is refused before any step)."""
    from fe2nn.macro.run import RunOutcome, build_problem
    from fe2nn.macro.solver import solve

    rec = _Recorder(steps, times)
    callbacks = [rec]
    if cfg.output.strain_paths:  # each run writes its own strain_paths.h5
        from fe2nn.macro.history import StrainHistory

        callbacks.append(StrainHistory(t0=cfg.load.times[0]))
    comm.barrier()
    t0 = time.perf_counter()
    with RunOutcome(None if record is None else lambda outcome: record(out, outcome)) as outcome:
        result = solve(build_problem(cfg, mesh, material), cfg.load.times, cfg.load.factors, steps=cfg.load.steps,
                       max_dt=cfg.load.max_dt, reaction=cfg.output.reaction, output=out, **cfg.solver.solve_kwargs(),
                       vtx=cfg.output.vtx, every=cfg.output.every, plot=cfg.output.plot, progress=progress,
                       callback=callbacks, checkpoint=checkpoint, resume=resume, substeps=substeps)
        outcome.finish(len(result.steps))
    wall = comm.allreduce(time.perf_counter() - t0, op=__import__("mpi4py").MPI.MAX)
    resumed = checkpoint.resumed_step if resume else 0
    # a resumed run: the steps of the checkpoint by their own wall times (output writing excluded)
    wall += comm.allreduce(sum(r.wall_time for r in result.steps[:resumed]), op=__import__("mpi4py").MPI.MAX)
    if len(callbacks) > 1:  # after the timing
        from fe2nn.macro.history import FILE_NAME

        callbacks[1].write(out / FILE_NAME, attrs={"config": "validate", "mesh": Path(cfg.mesh.file).name})
    constitutive = comm.allreduce(sum(r.timings.get("constitutive", 0.0) for r in result.steps),
                                  op=__import__("mpi4py").MPI.MAX)
    n_points = int(comm.allreduce(result.solver.qf.n_points))
    n_evals = sum(r.evaluations or r.iterations + 1 for r in result.steps)  # 0: a checkpoint of an older version
    result.solver.destroy()
    return result, rec, {"wall_time_s": wall, "constitutive_time_s": constitutive, "n_points": n_points,
                         "material_evaluations": n_evals, "resumed_after_step": resumed or None}


def compare(sur, ref, rec_s, rec_r, comm) -> Dict[str, Any]:
    """Reaction and stress-field metrics of run ``sur`` against run ``ref`` (see module docstring),
    normalised by ``ref``'s reaction; stress steps numbered as in ``sur``."""
    ts = {round(r.time, 12): r for r in sur.steps}
    common = [r for r in ref.steps if round(r.time, 12) in ts]
    R_ref = np.array([r.reaction for r in common])
    R_sur = np.array([ts[round(r.time, 12)].reaction for r in common])
    scale = float(np.linalg.norm(R_ref, axis=1).max(initial=0.0))
    dev = np.linalg.norm(R_sur - R_ref, axis=1) / scale if scale > 0 else np.zeros(len(common))
    stress = []
    w = rec_r.weights
    for t in sorted(set(rec_s.stress) & set(rec_r.stress)):
        s_ref = rec_r.stress[t]
        d = rec_s.stress[t] - s_ref
        num = comm.allreduce(float(np.sum(w * np.einsum("ni,ni->n", d, d))))
        den = comm.allreduce(float(np.sum(w * np.einsum("ni,ni->n", s_ref, s_ref))))
        step = ts[t].step  # the first run's step number (the config's, where that run is not refined)
        stress.append({"step": step, "time": t, "relative_l2": math.sqrt(num / den) if den > 0 else float("nan")})
    i = int(np.argmax(dev)) if len(dev) else 0
    # the first loading branch: steps up to the first reversal of the load factor
    f = np.array([0.0] + [r.factor for r in common])
    turn = np.flatnonzero(np.diff(np.sign(np.diff(f))) != 0)
    n_mono = int(turn[0]) + 1 if turn.size else len(common)
    return {
        "compared_steps": len(common),
        "reaction_scale_N": scale,
        "max_reaction_deviation": float(dev.max(initial=0.0)),
        "max_reaction_deviation_step": common[i].step if common else None,
        "reaction_deviation_per_step": dev.tolist(),
        "first_branch_steps": n_mono,
        "max_reaction_deviation_first_branch": float(dev[:n_mono].max(initial=0.0)),
        "reaction_deviation_first_branch": "the same maximum over the steps up to the first reversal of the load factor",
        "stress_relative_l2": stress,
        "max_stress_relative_l2": max((s["relative_l2"] for s in stress), default=float("nan")),
    }


def _plot(path: Path, sur, ref, boundary, refined_runs: Optional[tuple] = None) -> None:
    """Force-displacement overlay of the two runs; ``refined_runs``: (factor, surrogate, reference)
    at the refined steps, drawn as thin lines."""
    plt = pyplot()

    R = np.array([r.reaction for r in ref.steps])
    i = int(np.argmax(np.abs(R).max(axis=0)))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    runs = [(ref, "full RVE (FE²)", "o-", {}), (sur, "RNO surrogate", "x--", {})]
    if refined_runs:
        n, sur_f, ref_f = refined_runs
        runs += [(ref_f, f"full RVE, {n} × the steps", "-", dict(lw=0.8, color="k")),
                 (sur_f, f"RNO surrogate, {n} × the steps", ":", dict(lw=0.8, color="tab:red"))]
    for res, label, style, kw in runs:
        u = np.r_[0.0, [r.displacement[i] for r in res.steps]]
        f = np.r_[0.0, [r.reaction[i] for r in res.steps]]
        ax.plot(u, f, style, ms=4, label=label, **kw)
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-2, 3))
    ax.set_xlabel(f"mean displacement u_{'xyz'[i]} on '{boundary}' [m]")
    ax.set_ylabel(f"reaction force R_{'xyz'[i]} [N]")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def material_summary(table: Dict[str, Any]) -> str:
    """A [material] table as JSON without the keys its model accepts only to ignore them (the other
    backend's keys of the one-key switch)."""
    from fe2nn.materials.rno import RVE_KEYS
    from fe2nn.materials.rve import RNO_KEYS

    ignored = {"rno": RVE_KEYS, "rve": RNO_KEYS}.get(table.get("model"), ())
    return json.dumps({k: v for k, v in table.items() if k not in ignored}, sort_keys=True)


def markdown(report: Dict[str, Any]) -> str:
    c, t = report["comparison"], report["timing"]
    ok = "PASS" if report["pass"] else "FAIL"
    lines = [
        f"# FE² validation: {report['config']}"
        + "".join(f" --set {o}" for o in report.get("overrides", [])), "",
        f"Surrogate `{material_summary(json.loads(report['surrogate_material']))}` vs reference "
        f"`{material_summary(json.loads(report['reference_material']))}` "
        f"on {t['reference']['n_points']} quadrature points, {report['ranks']} MPI rank(s).", "",
        "| metric | value |", "|---|---|",
        f"| max reaction deviation (max\\|ΔR\\| / max\\|R_ref\\|) | {c['max_reaction_deviation']:.3%} "
        f"(target ≤ {report['target_reaction_deviation']:.0%}: {ok}) |",
        f"| … on the first loading branch (steps 1–{c['first_branch_steps']}) | "
        f"{c['max_reaction_deviation_first_branch']:.3%} |",
        f"| max relative L2 stress difference (over {len(c['stress_relative_l2'])} compared stress fields) | "
        f"{c['max_stress_relative_l2']:.3%} |",
        f"| steps with compared reactions | {c['compared_steps']} |",
        f"| Newton iterations per step, surrogate (max / mean) | {max(report['iterations']['surrogate'], default=0)} / "
        f"{np.mean(report['iterations']['surrogate']):.2f} |",
        f"| Newton iterations per step, reference (max / mean) | {max(report['iterations']['reference'], default=0)} / "
        f"{np.mean(report['iterations']['reference']):.2f} |",
        f"| wall time surrogate / reference [s] | {t['surrogate']['wall_time_s']:.2f} / {t['reference']['wall_time_s']:.2f} |",
        f"| speedup, whole solve | {t['speedup_wall']:.1f}× |",
        f"| speedup, constitutive update only | {t['speedup_constitutive']:.1f}× |",
        f"| out-of-distribution points (max per step / steps affected) | {report['ood']['max_ood_points']} / "
        f"{report['ood']['steps_with_ood']} |", "",
        "Stress differences per compared step:", "", "| step | time [s] | relative L2 |", "|---|---|---|",
    ]
    lines += [f"| {s['step']} | {s['time']:.6g} | {s['relative_l2']:.3%} |" for s in c["stress_relative_l2"]]
    rf = report.get("refinement")
    if rf:
        e, m, f = rf["reference_step_error"], rf["surrogate_step_change"], rf["comparison"]
        lines += ["", f"Step-size check (`validate.refine = {rf['factor']}`: both solved again with "
                      f"{rf['factor']} × the steps, {rf['steps']} steps):", "",
                  "| | max reaction deviation | max relative L2 stress difference |", "|---|---|---|",
                  f"| reference against the refined reference (its own step error) | "
                  f"{e['max_reaction_deviation']:.3%} | {e['max_stress_relative_l2']:.3%} |",
                  f"| surrogate against the refined surrogate | {m['max_reaction_deviation']:.3%} | "
                  f"{m['max_stress_relative_l2']:.3%} |",
                  f"| surrogate against reference, both refined | {f['max_reaction_deviation']:.3%} | "
                  f"{f['max_stress_relative_l2']:.3%} |"]
        if e["max_reaction_deviation"] >= 0.5 * c["max_reaction_deviation"]:
            lines += ["", "The reference's own step error is at least half the deviation above: at these steps the "
                          "comparison does not resolve the surrogate's error; read the refined row."]
    resumed = t["reference"].get("resumed_after_step")
    if resumed:
        lines += ["", f"The reference solve was resumed from its checkpoint after step {resumed}; its wall time "
                      f"counts the steps before by their own step times (output writing excluded)."]
    lines += ["", "Definitions: see `report.json` → `definitions`.", ""]
    return "\n".join(lines)


DEFINITIONS = {
    "reaction_deviation": "max over common steps of |R_sur - R_ref| / max over steps of |R_ref| (Euclidean norms of "
                          "the reaction force vector on output.reaction)",
    "stress_relative_l2": "sqrt(sum_q w_q |s_sur-s_ref|^2 / sum_q w_q |s_ref|^2) over all quadrature points, "
                          "w_q = quadrature weight x |detJ|, Mandel norm",
    "speedup_wall": "wall time of the reference solve / wall time of the surrogate solve (max over ranks, "
                    "mesh and material set-up excluded, output writing included)",
    "speedup_constitutive": "time in material.update (all Newton iterations), reference / surrogate",
    "refinement": "validate.refine = N: both solved again with every step split into N; reference_step_error = the reference "
                  "against the refined reference, surrogate_step_change = the surrogate against the refined "
                  "surrogate, comparison = the refined surrogate against the refined reference (the same metrics, "
                  "each normalised by its second run's reaction), at the times of the config's steps",
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fe2nn validate", description="Run a structural problem with the "
                                 "surrogate and with the full RVE (FE²) and compare them.")
    ap.add_argument("config", help="fe2nn solve config with a [validate] table")
    ap.add_argument("--output", "-o", help="output directory (overrides [output].dir)")
    ap.add_argument("--quiet", "-q", action="store_true", help="no per-step progress lines")
    ap.add_argument("--resume", action="store_true",
                    help="continue the reference (full RVE) solve from <output dir>/reference/checkpoint/ "
                         "(written with [output] checkpoint_every = N); the surrogate solve runs again")
    ap.add_argument("--strict", action="store_true",
                    help="exit with status 1 when the largest reaction deviation misses "
                         "validate.max_reaction_deviation (the report is written either way)")
    add_override_argument(ap)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    file = args.config
    cfg, vcfg = load(file, args.overrides)
    import fe2nn.materials.rno  # noqa: F401 - register the FE² backends (lists them in error hints)
    import fe2nn.materials.rve  # noqa: F401
    from fe2nn.materials.registry import build_material, parse_material

    parse_material(cfg.material, file)
    parse_material(vcfg.reference, file, key="validate.reference")
    out = Path(args.output) if args.output else resolve_path(file, cfg.output.dir)
    mesh_path = resolve_path(file, cfg.mesh.file)

    from mpi4py import MPI

    from fe2nn.macro.problem import inspect_msh, read_mesh
    from fe2nn.macro.run import check_boundaries

    comm = MPI.COMM_WORLD
    try:
        info = inspect_msh(mesh_path, comm)
    except UserError as err:
        raise UserError(f"{file}: key 'mesh.file': {err}") from None
    check_boundaries(cfg, file, info)
    sur_mat = build_material(cfg.material, file)
    ref_mat = build_material(vcfg.reference, file, key="validate.reference")
    from fe2nn.macro.checkpoint import Checkpoint, fingerprint

    settings = load_toml(file, args.overrides)
    problem_id = fingerprint(settings, mesh_path)
    checkpoint = None  # of the reference solve, the long one
    if cfg.output.checkpoint_every or args.resume:
        checkpoint = Checkpoint(out / "reference", cfg.output.checkpoint_every, problem_id, comm)
        if args.resume:
            checkpoint.load()  # one clear line now, not after the surrogate solve

    def recorder(run: str, material: dict, substeps: int = 1) -> Callable[[Path, dict], None]:
        """Writes a run's run.json: fe2nn solve's record, plus which run of validate it is."""
        from fe2nn.macro.run import write_run_record

        extra = {"validate_run": run, "material": material, "steps_per_config_step": substeps}
        return lambda out_dir, outcome: write_run_record(
            out_dir, argv, args, settings, mesh_path, problem_id["mesh_sha256"], comm, outcome,
            command="validate", extra=extra)

    mesh = read_mesh(mesh_path, comm)
    steps = set(vcfg.stress_steps) or None

    n_runs = 4 if vcfg.refine > 1 else 2
    rank0_print(f"[1/{n_runs}] surrogate ({cfg.material.get('model')}) solve", comm=comm)
    sur, rec_s, tim_s = _run(cfg, mesh, sur_mat, out / "surrogate", steps, not args.quiet, comm,
                             record=recorder("surrogate", cfg.material))
    rank0_print(f"      {tim_s['wall_time_s']:.2f} s; {rec_s.ood.line()}", comm=comm)
    rank0_print(f"[2/{n_runs}] reference ({vcfg.reference.get('model')}, {vcfg.reference.get('solver', '')}) solve",
                comm=comm)
    ref, rec_r, tim_r = _run(cfg, mesh, ref_mat, out / "reference", steps, not args.quiet, comm,
                             checkpoint=checkpoint, resume=args.resume, record=recorder("reference", vcfg.reference))
    rank0_print(f"      {tim_r['wall_time_s']:.2f} s", comm=comm)

    cmp_ = compare(sur, ref, rec_s, rec_r, comm)
    refinement, sur_f, ref_f = None, None, None
    if vcfg.refine > 1:  # both again at N x the steps, stresses at the same times as above
        fine, n = refined(cfg, vcfg.refine), vcfg.refine
        times = set(rec_r.stress)
        rank0_print(f"[3/4] surrogate solve at {n} x the steps", comm=comm)
        sur_f, rec_sf, tim_sf = _run(fine, mesh, build_material(cfg.material, file), out / "surrogate_refined",
                                     None, not args.quiet, comm, times=times, substeps=n,
                                     record=recorder("surrogate_refined", cfg.material, n))
        rank0_print(f"      {tim_sf['wall_time_s']:.2f} s", comm=comm)
        rank0_print(f"[4/4] reference solve at {n} x the steps", comm=comm)
        ref_f, rec_rf, tim_rf = _run(fine, mesh, build_material(vcfg.reference, file, key="validate.reference"),
                                     out / "reference_refined", None, not args.quiet, comm, times=times, substeps=n,
                                     record=recorder("reference_refined", vcfg.reference, n))
        rank0_print(f"      {tim_rf['wall_time_s']:.2f} s", comm=comm)
        refinement = {
            "factor": n, "steps": len(ref_f.steps),
            "reference_step_error": compare(ref, ref_f, rec_r, rec_rf, comm),
            "surrogate_step_change": compare(sur, sur_f, rec_s, rec_sf, comm),
            "comparison": compare(sur_f, ref_f, rec_sf, rec_rf, comm),
            "timing": {"surrogate": tim_sf, "reference": tim_rf},
            "iterations": {"surrogate": [r.iterations for r in sur_f.steps],
                           "reference": [r.iterations for r in ref_f.steps]},
        }
    timing = {"surrogate": tim_s, "reference": tim_r,
              "speedup_wall": tim_r["wall_time_s"] / max(tim_s["wall_time_s"], 1e-300),
              "speedup_constitutive": tim_r["constitutive_time_s"] / max(tim_s["constitutive_time_s"], 1e-300)}
    for k, tim in (("surrogate", tim_s), ("reference", tim_r)):
        tim["constitutive_time_per_point_evaluation_s"] = tim["constitutive_time_s"] / max(
            tim["material_evaluations"] * tim["n_points"], 1)
    report = {
        "config": str(file), "overrides": list(args.overrides), "ranks": comm.size,
        "surrogate_material": json.dumps(cfg.material, sort_keys=True),
        "reference_material": json.dumps(vcfg.reference, sort_keys=True),
        "target_reaction_deviation": vcfg.max_reaction_deviation,
        "pass": bool(cmp_["max_reaction_deviation"] <= vcfg.max_reaction_deviation),
        "comparison": cmp_, "timing": timing,
        "iterations": {"surrogate": [r.iterations for r in sur.steps], "reference": [r.iterations for r in ref.steps]},
        "cutbacks": {"surrogate": sum(r.cutbacks for r in sur.steps), "reference": sum(r.cutbacks for r in ref.steps)},
        "ood": rec_s.ood.summary(), "definitions": DEFINITIONS,
        **({"refinement": refinement} if refinement else {}),
    }
    if comm.rank == 0:
        _plot(out / "force_displacement.png", sur, ref, cfg.output.reaction,
              (vcfg.refine, sur_f, ref_f) if refinement else None)
        write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
        write_text_atomic(out / "report.md", markdown(report))
    comm.barrier()
    rank0_print(f"max reaction deviation {cmp_['max_reaction_deviation']:.3%} "
                f"({'PASS' if report['pass'] else 'FAIL'}, target {vcfg.max_reaction_deviation:.0%}); "
                f"max stress L2 difference {cmp_['max_stress_relative_l2']:.3%}; "
                f"speedup {timing['speedup_wall']:.1f}x (constitutive {timing['speedup_constitutive']:.1f}x)", comm=comm)
    if refinement:
        rf = refinement
        rank0_print(f"at {rf['factor']} x the steps: the reference moves by "
                    f"{rf['reference_step_error']['max_reaction_deviation']:.3%} (its own step error), the surrogate "
                    f"by {rf['surrogate_step_change']['max_reaction_deviation']:.3%}; surrogate against reference, "
                    f"both refined: {rf['comparison']['max_reaction_deviation']:.3%}", comm=comm)
    rank0_print(f"report: {out / 'report.md'}, {out / 'report.json'}, {out / 'force_displacement.png'}", comm=comm)
    for rec in (rec_s, rec_r, *((rec_sf, rec_rf) if refinement else ())):
        rec.close()
    return 1 if args.strict and not report["pass"] else 0
