"""``fe2nn generate CONFIG``: RVE responses to random strain paths -> HDF5 dataset (MPI, resumable).

Samples 0..N-1 are laid out family by family (random_walk, monotonic, cyclic) and
cut into chunks of ``batch_size`` consecutive samples.  Chunk k is computed by
rank ``k % n_ranks``: all its samples advance increment by increment in one
batched material call (per-sample ``dt`` as an (n,) tensor).  Because a chunk's
content never depends on the rank count, neither does the result.

Every finished chunk is written atomically to ``<output>.parts/chunk_KKKKKK.h5``
with the config hash and a sha256 checksum.  A killed run is restarted with the
same command; it skips valid chunks.  At the end rank 0 assembles the dataset
(temporary name + rename) and removes the parts directory.  Parts that are
unreadable, fail their checksum or come from another config are reported as an
error naming the file, never used.

Screening: an increment that raises MaterialConvergenceError is retried point by
point with sub-stepping (2, 4, ... ``max_substeps`` sub-increments); a sample that
still fails is marked ``converged = False`` (stress NaN from there on).  Samples
that did not converge or whose largest Hill-Mandel residual exceeds
``hill_mandel_tol`` get ``accepted = False``.

Testing hook: the environment variable ``FE2NN_GENERATE_ABORT_AFTER=k`` kills the
process (SIGKILL) right after it has written k chunks.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sys
import time as _time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import fe2nn
from fe2nn import interrupt
from fe2nn.config import add_override_argument, load_toml, non_negative, parse, positive, resolve_path
from fe2nn.data import paths as P
from fe2nn.data.dataset import FORMAT, FORMAT_VERSION, array_checksum, read_arrays
from fe2nn.errors import UserError
from fe2nn.io_utils import format_duration, git_commit, time_left
from fe2nn.materials.base import Material, MaterialConvergenceError, put_state, take_state
from fe2nn.micro.rve import RVEConfig, build_rve, describe

PART_FORMAT = "fe2nn-dataset-part"
PART_ARRAYS = (("sample_index", "<i8"), ("strain", "<f8"), ("stress", "<f8"), ("time", "<f8"),
               ("hill_mandel", "<f8"), ("iterations", "<i8"), ("converged", "|b1"), ("family", "<i8"))


# -- config ---------------------------------------------------------------------------------
@dataclass
class PathsConfig:
    random_walk: P.RandomWalk = field(default_factory=P.RandomWalk)
    monotonic: P.Monotonic = field(default_factory=P.Monotonic)
    cyclic: P.Cyclic = field(default_factory=P.Cyclic)
    reversal_walk: P.ReversalWalk = field(default_factory=P.ReversalWalk)
    recorded: P.Recorded = field(default_factory=P.Recorded)


@dataclass
class GenerateConfig:
    output: str = field(metadata=dict(doc="output HDF5 file, relative to the config file"))
    rve: RVEConfig = field(default_factory=RVEConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    n_steps: int = field(default=200, metadata=dict(doc="increments per path", check=lambda v: None if v >= 2
                                                      else "must be >= 2"))
    seed: int = field(default=0, metadata=dict(doc="global seed of the strain paths", check=non_negative))
    batch_size: int = field(default=16, metadata=dict(doc="samples per batched RVE call (and per part file)",
                                                      check=positive))
    hill_mandel_tol: float = field(default=1e-6, metadata=dict(doc="largest accepted Hill-Mandel residual",
                                                               check=non_negative))
    max_substeps: int = field(default=16, metadata=dict(doc="finest sub-stepping of a failed increment",
                                                        check=positive))

    def validate(self) -> None:
        if sum(getattr(self.paths, f).count for f in P.FAMILY_NAMES) == 0:
            raise ValueError("paths: every family has count = 0; set paths.<family>.count > 0 "
                             f"for at least one of {', '.join(P.FAMILY_NAMES)}")

    @property
    def n_samples(self) -> int:
        return sum(getattr(self.paths, f).count for f in P.FAMILY_NAMES)


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> GenerateConfig:
    """Parse and validate a generate config; ``overrides``: ``KEY=VALUE`` strings (``--set``)."""
    cfg = parse(GenerateConfig, load_toml(path, overrides), str(path))
    rec = cfg.paths.recorded
    if rec.count > 0:  # read the recorded paths now: errors before any work, and their hash in the config
        file = resolve_path(path, rec.file)
        if not file.is_file():
            raise UserError(f"{path}: key 'paths.recorded.file': {file} not found (a strain_paths.h5 of fe2nn solve "
                            "with output.strain_paths = true)")
        try:
            rec.load(file)
        except UserError as err:
            raise UserError(f"{path}: key 'paths.recorded.file': {err}") from None
    return cfg


def family_names(cfg: GenerateConfig) -> List[str]:
    """The family names a dataset of ``cfg`` records (``recorded`` only when it has samples, so that
    other datasets keep the names, path settings and recipe hash they had before it existed)."""
    return [f for f in P.FAMILY_NAMES if f in P.SYNTHETIC or getattr(cfg.paths, f).count > 0]


def sample_layout(cfg: GenerateConfig) -> Tuple[np.ndarray, List]:
    """Family code (N,) and family config of every sample (families in FAMILY_NAMES order)."""
    codes, cfgs = [], []
    for code, name in enumerate(P.FAMILY_NAMES):
        fam = getattr(cfg.paths, name)
        codes += [code] * fam.count
        cfgs += [fam] * fam.count
    return np.asarray(codes, dtype=np.int64), cfgs


def config_hash(cfg: GenerateConfig, rve_meta: dict) -> str:
    """Hash of everything that determines the data arrays of the parts (not output, not tolerance)."""
    key = dataclasses.asdict(cfg)
    for k in ("output", "hill_mandel_tol"):
        key.pop(k)
    key["paths"] = {f: v for f, v in key["paths"].items() if f in family_names(cfg)}  # as before `recorded`
    key["rve_meta"] = rve_meta
    key["part_format"] = PART_FORMAT
    key["fe2nn_version"] = fe2nn.__version__  # parts of another release are not mixed in
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=repr).encode()).hexdigest()


# -- simulation of one batch ----------------------------------------------------------------
def _info(material: Material, key: str, n: int, default: float) -> np.ndarray:
    v = getattr(material, "info", {}).get(key)
    if v is None:
        return np.full(n, default)
    return np.asarray(torch.as_tensor(v).detach().cpu().reshape(-1), dtype=np.float64)[:n] if np.ndim(v) else \
        np.full(n, float(v))


def _update(material: Material, strain, dt, state):
    """One batched update; returns stress, new state, hill_mandel (n,), iterations (n,)."""
    stress, _, new = material.update(strain, dt, state)
    if not torch.isfinite(stress).all():
        raise MaterialConvergenceError("non-finite stress", failed=~torch.isfinite(stress).all(dim=1))
    n = strain.shape[0]
    return stress, new, np.abs(_info(material, "hill_mandel", n, 0.0)), _info(material, "iterations", n, 0.0)


def _substepped(material, eps0, eps1, dt, state, max_substeps: int):
    """Advance one point (batch of 1) from eps0 to eps1 in 1, 2, 4 ... sub-increments; None if all fail.

    What the material keeps of its last update is dropped first: the point retried before may have
    started from the same state with the same step (two virgin samples), and its substeps are not
    this point's (a copper Taylor cell took them over, 4e-4 off its own answer)."""
    material.forget_last_update()
    m = 1
    while m <= max_substeps:
        try:
            st, hm, it = state, 0.0, 0.0
            for j in range(1, m + 1):
                stress, st, h, i = _update(material, eps0 + (eps1 - eps0) * (j / m), dt / m, st)
                hm, it = max(hm, float(h[0])), it + float(i[0])
            return stress, st, hm, it
        except MaterialConvergenceError:
            m *= 2
    return None


def _failed_mask(err: MaterialConvergenceError, n: int) -> Optional[np.ndarray]:
    f = getattr(err, "failed", None)
    if f is None:
        return None
    f = np.asarray(torch.as_tensor(f).detach().cpu()).astype(bool).reshape(-1)
    return f if f.shape == (n,) else None


def _recover(material, eps, dts, t, act, act_t, sub, err, max_substeps, stress, hill, iters, converged):
    """After a failed batched increment t: redo the points not flagged as failed in one batched call,
    then the rest (or everything, if that fails too) point by point with sub-stepping.  Fills the
    output arrays in place and returns the new state of the active points."""
    new = {k: v.clone() for k, v in sub.items()}
    pending = np.ones(act.size, dtype=bool)
    failed = _failed_mask(err, act.size)
    if failed is not None and failed.any() and not failed.all():
        ok = torch.as_tensor(np.nonzero(~failed)[0], device=eps.device)
        try:
            s, st, hm, it = _update(material, eps[act_t[ok], t], dts[act_t[ok], t - 1], take_state(sub, ok))
            rows = act[~failed]
            stress[rows, t] = s.detach().cpu().numpy()
            hill[rows, t - 1], iters[rows, t - 1] = hm, it
            for k in new:
                new[k][ok] = st[k]
            pending = failed.copy()
        except MaterialConvergenceError:
            pass
    for k in np.nonzero(pending)[0]:
        i = act[k]
        res = _substepped(material, eps[i:i + 1, t - 1], eps[i:i + 1, t], dts[i:i + 1, t - 1],
                          take_state(sub, slice(k, k + 1)), max_substeps)
        if res is None:  # keep the old state; the sample is dropped from now on
            converged[i] = False
            continue
        stress[i, t] = res[0][0].detach().cpu().numpy()
        hill[i, t - 1], iters[i, t - 1] = res[2], res[3]
        for name in new:
            new[name][k:k + 1] = res[1][name]
    return new


def simulate(material: Material, strain: np.ndarray, time: np.ndarray, max_substeps: int = 16,
             progress=None) -> Dict[str, np.ndarray]:
    """Drive ``material`` along paths strain (n,T+1,6) [-], time (n,T+1) [s], all points batched.

    Returns stress (n,T+1,6) [Pa] (NaN after a failure), hill_mandel (n,T), iterations (n,T),
    converged (n,).  ``progress(t)`` is called after each increment t.
    """
    n, T1, _ = strain.shape
    T = T1 - 1
    eps = material.as_tensor(strain)
    dts = material.as_tensor(np.diff(time, axis=1))
    stress = np.full((n, T1, 6), np.nan)
    stress[:, 0] = 0.0  # virgin material at zero strain
    hill = np.full((n, T), np.nan)
    iters = np.full((n, T), -1, dtype=np.int64)
    converged = np.ones(n, dtype=bool)
    state = material.initial_state(n)
    for t in range(1, T1):
        act = np.nonzero(converged)[0]
        if act.size == 0:
            break
        full = act.size == n
        act_t = torch.as_tensor(act, device=eps.device)
        sub = state if full else take_state(state, act_t)
        try:
            s, new, hm, it = _update(material, eps[act_t, t], dts[act_t, t - 1], sub)
            stress[act, t] = s.detach().cpu().numpy()
            hill[act, t - 1], iters[act, t - 1] = hm, it
        except MaterialConvergenceError as err:
            new = _recover(material, eps, dts, t, act, act_t, sub, err, max_substeps, stress, hill, iters, converged)
        if full:
            state = new
        elif state:
            state = put_state(state, act_t, new)
        if progress is not None:
            progress(t)
    return {"stress": stress, "hill_mandel": hill, "iterations": iters, "converged": converged}


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# -- part files -----------------------------------------------------------------------------
class Parts:
    """The ``<output>.parts/`` directory of one generation run."""

    def __init__(self, output: Path, cfg_hash: str, n_samples: int, batch_size: int):
        self.dir = output.with_name(output.name + ".parts")
        self.hash = cfg_hash
        self.n_samples, self.batch_size = n_samples, batch_size
        self.n_chunks = -(-n_samples // batch_size)

    def chunk_range(self, k: int) -> Tuple[int, int]:
        return k * self.batch_size, min((k + 1) * self.batch_size, self.n_samples)

    def path(self, k: int) -> Path:
        return self.dir / f"chunk_{k:06d}.h5"

    def prepare(self) -> None:
        """Create the directory, check its config stamp, remove stale temporary files (rank 0)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = self.dir / "config_hash"
        if stamp.exists():
            if stamp.read_text().strip() != self.hash:
                raise UserError(f"{stamp}: parts directory belongs to a different config; remove {self.dir} "
                                "or restore the original config")
        else:
            tmp = self.dir / ".config_hash.tmp"
            tmp.write_text(self.hash + "\n")
            os.replace(tmp, stamp)
        for p in self.dir.iterdir():
            if p.name.startswith("."):  # temporary files of a killed writer
                p.unlink()
            elif p.name != "config_hash" and not (p.name.startswith("chunk_") and p.suffix == ".h5"):
                raise UserError(f"{p}: unexpected file in the parts directory {self.dir}")

    def write(self, k: int, arrays: Dict[str, np.ndarray]) -> None:
        import h5py

        final = self.path(k)
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        try:
            with h5py.File(tmp, "w") as fh:
                for name, dtype in PART_ARRAYS:
                    fh.create_dataset(name, data=np.asarray(arrays[name]).astype(dtype))
                fh.attrs.update(format=PART_FORMAT, config_hash=self.hash, chunk=k,
                                checksum=array_checksum(arrays, PART_ARRAYS))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.dir)
        finally:
            if tmp.exists():
                tmp.unlink()

    def read(self, k: int) -> Dict[str, np.ndarray]:
        """Arrays of chunk k, validated; UserError naming the file on any problem."""
        import h5py

        p = self.path(k)
        try:
            with h5py.File(p, "r") as fh:
                attrs = dict(fh.attrs)
                if attrs.get("format") != PART_FORMAT:
                    raise UserError(f"{p}: not an fe2nn part file")
                if attrs.get("config_hash") != self.hash:
                    raise UserError(f"{p}: part file from a different config (config hash mismatch); "
                                    f"remove {self.dir} or restore the original config")
                arrays = {name: fh[name][()] for name, _ in PART_ARRAYS}
        except UserError:
            raise
        except (OSError, KeyError, ValueError) as err:
            raise UserError(f"{p}: unreadable part file (truncated or corrupt): {err}") from None
        if array_checksum(arrays, PART_ARRAYS) != attrs.get("checksum"):
            raise UserError(f"{p}: part file checksum mismatch (corrupt)")
        a, b = self.chunk_range(k)
        if not np.array_equal(arrays["sample_index"], np.arange(a, b)):
            raise UserError(f"{p}: part file holds the wrong samples")
        return arrays

    def done(self) -> List[int]:
        """Chunks with a part file (each validated)."""
        out = []
        for k in range(self.n_chunks):
            if self.path(k).exists():
                self.read(k)
                out.append(k)
        for p in self.dir.glob("chunk_*.h5"):
            try:
                ok = 0 <= int(p.stem[6:]) < self.n_chunks
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"{p}: part file outside this config's {self.n_chunks} chunks")
        return out

    def samples_done(self) -> int:
        try:
            names = os.listdir(self.dir)
        except OSError:
            return 0
        total = 0
        for name in names:
            if name.startswith("chunk_") and name.endswith(".h5"):
                try:
                    a, b = self.chunk_range(int(name[6:-3]))
                    total += max(b - a, 0)
                except ValueError:
                    pass
        return total


# -- assembly -------------------------------------------------------------------------------
def assemble(cfg: GenerateConfig, parts: Parts, output: Path, metadata: Dict[str, str]) -> Dict[str, int]:
    """Concatenate all parts into the final dataset (atomic), add screening; return the summary."""
    import h5py

    from fe2nn.io_utils import atomic_path

    chunks = [parts.read(k) for k in range(parts.n_chunks)]
    arrays = {name: np.concatenate([c[name] for c in chunks]) for name, _ in PART_ARRAYS}
    hm_max = np.where(np.isnan(arrays["hill_mandel"]), np.inf, arrays["hill_mandel"]).max(axis=1)
    conv = arrays["converged"].astype(bool)
    arrays["accepted"] = conv & (hm_max <= cfg.hill_mandel_tol)
    summary = {"n_samples": int(conv.size), "n_accepted": int(arrays["accepted"].sum()),
               "n_rejected_not_converged": int((~conv).sum()),
               "n_rejected_hill_mandel": int((conv & ~arrays["accepted"]).sum()),
               "max_hill_mandel_converged": float(hm_max[conv].max()) if conv.any() else float("nan"),
               "hill_mandel_tol": cfg.hill_mandel_tol}
    with atomic_path(output) as tmp:
        with h5py.File(tmp, "w") as fh:
            for name, dtype in PART_ARRAYS + (("accepted", "|b1"),):
                fh.create_dataset(name, data=arrays[name].astype(dtype))
            fh["family"].attrs["family_names"] = family_names(cfg)
            fh.attrs.update(metadata)
            fh.attrs["family_names"] = family_names(cfg)
            fh.attrs["summary"] = json.dumps(summary, sort_keys=True)
            for k, v in summary.items():
                fh.attrs[k] = v
            fh.attrs["content_hash"] = array_checksum(arrays)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return summary


def summary_line(s: Dict[str, int]) -> str:
    return (f"{s['n_samples']} samples: {s['n_accepted']} accepted, {s['n_rejected_not_converged']} rejected "
            f"(not converged), {s['n_rejected_hill_mandel']} rejected (Hill-Mandel residual > "
            f"{s['hill_mandel_tol']:g}); largest converged residual {s['max_hill_mandel_converged']:.3g}")


# -- driver ---------------------------------------------------------------------------------
def _comm():
    try:
        from mpi4py import MPI

        return MPI.COMM_WORLD
    except Exception:  # pragma: no cover
        return None


class _SerialComm:
    rank, size = 0, 1

    def bcast(self, x, root=0):
        return x

    def allgather(self, x):
        return [x]

    def Barrier(self):
        pass


def _collective(comm, fn):
    """Run fn on every rank; if any rank raises, every rank raises a UserError with the first message."""
    err, res = None, None
    try:
        res = fn()
    except UserError as e:
        err = str(e)
    except Exception as e:  # noqa: BLE001 - report bugs from any rank, then fail everywhere
        err = f"rank {comm.rank}: {type(e).__name__}: {e}"
        if comm.size == 1:
            raise
    errors = [e for e in comm.allgather(err) if e]
    if errors:
        raise UserError(errors[0])
    return res


def generate(cfg: GenerateConfig, config_file: str = "<config>", output: Optional[Path] = None,
             material: Optional[Material] = None, overwrite: bool = False, progress: bool = True,
             comm=None, stop_after_chunks: Optional[int] = None) -> Optional[Dict[str, int]]:
    """Generate the dataset described by ``cfg`` (collective over ``comm``); return the screening summary.

    ``material`` replaces the RVE built from ``cfg.rve`` (tests, custom laws).  With
    ``stop_after_chunks = k`` each rank stops after writing k part files and None is returned
    (an interrupted run, for tests).
    """
    comm = comm or _comm() or _SerialComm()
    output = Path(output) if output is not None else resolve_path(config_file, cfg.output)
    codes, fam_cfgs = sample_layout(cfg)
    N = codes.size

    def setup():
        rve_meta = describe(cfg.rve, config_file) if material is None else \
            {"material": f"{type(material).__module__}.{type(material).__qualname__}"}
        return rve_meta, config_hash(cfg, rve_meta)

    rve_meta, cfg_hash = _collective(comm, setup)
    parts = Parts(output, cfg_hash, N, cfg.batch_size)

    def check_output():
        if output.exists() and overwrite:
            output.unlink()
        if output.exists():
            try:
                _, attrs = read_arrays(output)
            except UserError as err:
                raise UserError(f"{output}: output exists and is not a valid dataset ({err}); remove it") from None
            if attrs.get("config_hash") != cfg_hash:
                raise UserError(f"{output}: output exists (from a different config); remove it or pass --overwrite")
            if parts.dir.exists():
                shutil.rmtree(parts.dir)
            return True
        if overwrite and parts.dir.exists():
            shutil.rmtree(parts.dir)
        parts.prepare()
        return False

    complete = comm.bcast(_collective(comm, lambda: check_output() if comm.rank == 0 else None), root=0)
    if complete:
        from fe2nn.io_utils import rank0_print

        _, attrs = read_arrays(output)
        s = json.loads(attrs["summary"])
        rank0_print(f"{output}: already complete; " + summary_line(s), comm=comm)
        return s
    done = _collective(comm, lambda: parts.done() if comm.rank == 0 else None)
    done = set(comm.bcast(done, root=0))
    mine = [k for k in range(parts.n_chunks) if k % comm.size == comm.rank and k not in done]

    def work():
        mat = material if (material is not None or not mine) else build_rve(cfg.rve, config_file)
        bar = None
        if progress and comm.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=N, unit="sample", desc="fe2nn generate", dynamic_ncols=True, smoothing=0.1,
                       file=sys.stderr)
            bar.update(parts.samples_done())
        abort_after = int(os.environ.get("FE2NN_GENERATE_ABORT_AFTER", "0") or 0)
        written, stop = 0, None
        last = [0.0]
        log = not progress and comm.rank == 0  # unattended: one line per chunk of rank 0 instead of the bar
        start, before = _time.monotonic(), parts.samples_done()
        for k in mine:
            a, b = parts.chunk_range(k)
            idx = np.arange(a, b)
            strain, time = P.sample_paths([fam_cfgs[i] for i in idx], cfg.n_steps, cfg.seed, idx)

            def tick(t, a=a, b=b):
                if bar is not None and _time.monotonic() - last[0] > 0.5:
                    last[0] = _time.monotonic()
                    # fractions of a sample (two decimals): a chunk of slow samples moves from the start
                    bar.n = min(round(parts.samples_done() + (b - a) * t / cfg.n_steps, 2), N)
                    bar.refresh()

            res = simulate(mat, strain, time, cfg.max_substeps, progress=tick)
            parts.write(k, dict(res, sample_index=idx, strain=strain, time=time, family=codes[idx]))
            written += 1
            if log:  # all ranks' chunks on disk, at the pace of this run so far
                got, spent = parts.samples_done(), _time.monotonic() - start
                print(f"{got}/{N} samples, {format_duration(spent)}" + time_left(spent, got - before, N - got), flush=True)
            if abort_after and written >= abort_after:
                os.kill(os.getpid(), signal.SIGKILL)
            if stop_after_chunks is not None and written >= stop_after_chunks:
                break
            stop = interrupt.requested()  # SIGTERM (fe2nn.interrupt): after this chunk, on this rank
            if stop:
                break
        if bar is not None:
            bar.n = parts.samples_done()
            bar.refresh()
        return bar, stop

    bar, stop = _collective(comm, work)
    comm.Barrier()
    if bar is not None:
        bar.close()
    stopped = [s for s in comm.allgather(stop) if s]
    if stopped:
        raise interrupt.Interrupted(f"stopped by {stopped[0]} with {parts.samples_done()} of {N} samples written "
                                    f"(in {parts.dir}): run the same command again to continue")
    if stop_after_chunks is not None and any(comm.allgather(stop_after_chunks < len(mine))):
        return None  # interrupted on purpose: some rank left chunks undone

    def finish():
        if comm.rank != 0:
            return None
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config_hash": cfg_hash,
            "fe2nn_version": fe2nn.__version__, "git_commit": git_commit() or "",
            "created": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime()),
            "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
            "rve": json.dumps(rve_meta, sort_keys=True, default=repr),
            "material": json.dumps(rve_meta.get("material"), sort_keys=True, default=repr),
            "microstructure": json.dumps(rve_meta.get("microstructure"), sort_keys=True, default=repr),
            "solver": json.dumps({"solver": cfg.rve.solver, "options": cfg.rve.options, "device": cfg.rve.device,
                                  "max_substeps": cfg.max_substeps, "batch_size": cfg.batch_size}, sort_keys=True,
                                 default=repr),
            "paths": json.dumps({"n_steps": cfg.n_steps, "seed": cfg.seed,
                                 **{f: dataclasses.asdict(getattr(cfg.paths, f)) for f in family_names(cfg)}},
                                sort_keys=True),
            "hill_mandel_tol": cfg.hill_mandel_tol,
        }
        s = assemble(cfg, parts, output, meta)
        shutil.rmtree(parts.dir)
        return s

    summary = _collective(comm, finish)
    summary = comm.bcast(summary, root=0)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fe2nn generate", description="RVE responses to random strain paths -> "
                                 "HDF5 dataset (MPI-parallel under mpirun, resumable).")
    ap.add_argument("config", help="TOML config (see README, 'Training data')")
    ap.add_argument("--output", help="override the config's output file")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output and its parts")
    ap.add_argument("--no-progress", action="store_true",
                    help="no progress bar: one line per chunk (of rank 0) with the time left instead")
    add_override_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or torch.get_num_threads())
    cfg = load_config(args.config, args.overrides)
    t0 = _time.perf_counter()
    summary = generate(cfg, args.config, output=Path(args.output) if args.output else None,
                       overwrite=args.overwrite, progress=not args.no_progress)
    from fe2nn.io_utils import rank0_print

    out = Path(args.output) if args.output else resolve_path(args.config, cfg.output)
    rank0_print(f"{out}: {summary_line(summary)} [{_time.perf_counter() - t0:.1f} s]")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
