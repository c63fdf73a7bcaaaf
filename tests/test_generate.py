"""fe2nn generate: rank-count independence, kill-and-resume, corrupt parts, screening, config errors."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, mpirun_cmd, run_cli
from fe2nn.data import generate as G
from fe2nn.data.dataset import content_hash, load_dataset, read_arrays
from fe2nn.errors import UserError
from fe2nn.materials.base import Material, MaterialConvergenceError
from fe2nn.materials.j2 import J2Plasticity

J2 = dict(E=70e9, nu=0.33, sigma_y=100e6, H_iso=1e9, H_kin=5e8)

CONFIG = """
output = "{output}"
n_steps = {n_steps}
seed = {seed}
batch_size = 3
hill_mandel_tol = 1e-6
[rve]
solver = "taylor"
material = "aluminium"
[rve.microstructure]
n_grains = 3
grid = 6
seed = 1
[paths.random_walk]
count = 5
[paths.monotonic]
count = 3
[paths.cyclic]
count = 3
"""


def write_config(tmp_path: Path, name="gen.toml", output="data.h5", n_steps=20, seed=3, extra="") -> Path:
    p = tmp_path / name
    p.write_text(CONFIG.format(output=output, n_steps=n_steps, seed=seed) + extra)
    return p


def run_generate(config: Path, *args, n=1, env=None, timeout=300):
    base = [sys.executable, "-m", "fe2nn", "generate", str(config), "--no-progress", *args]
    cmd = mpirun_cmd(n, *base) if n > 1 else base
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=e)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("fe2nn: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in err[0], err[0]


def arrays(path):
    return read_arrays(path)[0]


def assert_same_data(a, b):
    A, B = arrays(a), arrays(b)
    for k in A:
        assert np.array_equal(A[k], B[k], equal_nan=A[k].dtype.kind == "f"), k
    assert content_hash(a) == content_hash(b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 1-rank run (11 samples, 4 chunks)."""
    d = tmp_path_factory.mktemp("ref")
    cfg = write_config(d)
    proc = run_generate(cfg)
    assert proc.returncode == 0, proc.stderr
    assert "11 samples: 11 accepted" in proc.stdout
    return d / "data.h5"


def test_unattended_run_logs_one_line_per_chunk_with_the_time_left(tmp_path):
    proc = run_generate(write_config(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stdout.splitlines() if "/11 samples" in x]
    assert [x.split("/")[0] for x in lines] == ["3", "6", "9", "11"], proc.stdout
    assert all(re.fullmatch(r"\d+/11 samples, \d+\.\d\d? s, \d+\.\d\d? s left", x) for x in lines[:-1]), lines
    assert re.fullmatch(r"11/11 samples, \d+\.\d\d? s", lines[-1]), lines[-1]


def test_dataset_matches_independent_material_calls(reference):
    """Batched generation with per-sample dt equals driving each sample alone with scalar dt."""
    from fe2nn.micro.rve import build_rve

    A = arrays(reference)
    assert np.array_equal(A["sample_index"], np.arange(11))
    assert list(A["family"]) == [0] * 5 + [1] * 3 + [2] * 3
    assert A["converged"].all() and A["accepted"].all()
    assert (A["iterations"] >= 0).all() and A["iterations"].max() >= 1 and (A["hill_mandel"] <= 1e-6).all()
    rve = build_rve(G.load_config(reference.parent / "gen.toml").rve)
    for i in (0, 6, 9):  # one sample per family
        state = rve.initial_state(1)
        dt = np.diff(A["time"][i])
        for t in range(1, A["strain"].shape[1]):
            s, _, state = rve.update(torch.from_numpy(A["strain"][i, t:t + 1]), float(dt[t - 1]), state)
            # both solves converge each grain's Newton to its tolerance: agreement to ~1e-9 relative
            np.testing.assert_allclose(A["stress"][i, t], s[0].numpy(), rtol=1e-9, atol=1e-9 * 1e8)
    assert np.all(A["stress"][:, 0] == 0.0)


def test_metadata_and_summary(reference):
    with h5py.File(reference, "r") as fh:
        assert list(fh["family"].attrs["family_names"]) == ["random_walk", "monotonic", "cyclic", "reversal_walk"]
        for key in ("material", "solver", "paths", "fe2nn_version", "git_commit", "config_hash", "summary"):
            assert key in fh.attrs, key
        assert fh.attrs["n_accepted"] == 11 and fh.attrs["n_rejected_hill_mandel"] == 0


def test_two_ranks_give_the_same_dataset(reference, tmp_path):
    cfg = write_config(tmp_path)
    proc = run_generate(cfg, n=2)
    assert proc.returncode == 0, proc.stderr
    assert_same_data(reference, tmp_path / "data.h5")
    assert not (tmp_path / "data.h5.parts").exists()


def test_kill_and_resume_with_other_rank_count(reference, tmp_path):
    cfg = write_config(tmp_path)
    killed = run_generate(cfg, env={"FE2NN_GENERATE_ABORT_AFTER": "2"})
    assert killed.returncode != 0
    parts = sorted((tmp_path / "data.h5.parts").glob("chunk_*.h5"))
    assert [p.name for p in parts] == ["chunk_000000.h5", "chunk_000001.h5"]
    assert not (tmp_path / "data.h5").exists()
    # a stale temporary file of a killed writer is ignored and removed
    (tmp_path / "data.h5.parts" / ".chunk_000002.h5.tmp999").write_bytes(b"garbage")
    mtime = parts[0].stat().st_mtime_ns
    resumed = run_generate(cfg, n=2)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_data(reference, tmp_path / "data.h5")
    assert not (tmp_path / "data.h5.parts").exists()
    # running again is a no-op that reports the stored summary
    again = G.generate(G.load_config(cfg), str(cfg), progress=False)
    assert again["n_accepted"] == 11 and not (tmp_path / "data.h5.parts").exists()
    assert mtime > 0


def test_sigterm_stops_after_the_chunk_in_progress_and_the_run_resumes(reference, tmp_path, monkeypatch):
    """Under the command line's graceful stop, a SIGTERM ends fe2nn generate after the chunk in
    progress is written, with one line saying how far it got and how to continue (exit 143); the
    same command then completes the dataset as if never stopped."""
    from fe2nn import interrupt
    from fe2nn.cli import main as cli_main

    cfg = write_config(tmp_path)
    calls = [0]

    def requested(comm=None):
        calls[0] += 1
        return "SIGTERM" if calls[0] == 2 else None  # the signal arrives during the second chunk

    monkeypatch.setattr(interrupt, "requested", requested)
    with pytest.raises(interrupt.Interrupted, match=r"stopped by SIGTERM with 6 of 11 samples written .*"
                                                    r"run the same command again to continue"):
        G.generate(G.load_config(cfg), str(cfg), progress=False)
    assert len(list((tmp_path / "data.h5.parts").glob("chunk_*.h5"))) == 2 and not (tmp_path / "data.h5").exists()
    monkeypatch.setattr(interrupt, "requested", lambda comm=None: None)
    assert cli_main(["generate", str(cfg), "--no-progress"]) == 0
    assert_same_data(reference, tmp_path / "data.h5")


def interrupted(cfg: Path, chunks: int) -> None:
    """An in-process run stopped after ``chunks`` part files."""
    assert G.generate(G.load_config(cfg), str(cfg), progress=False, stop_after_chunks=chunks) is None


def test_truncated_part_file_is_reported(tmp_path):
    cfg = write_config(tmp_path)
    interrupted(cfg, 2)
    part = tmp_path / "data.h5.parts" / "chunk_000001.h5"
    part.write_bytes(part.read_bytes()[:500])
    proc = run_generate(cfg)
    assert_one_line_error(proc, str(part), "truncated or corrupt")
    assert not (tmp_path / "data.h5").exists()


def test_corrupted_part_checksum_is_reported(tmp_path):
    cfg = write_config(tmp_path)
    interrupted(cfg, 1)
    part = tmp_path / "data.h5.parts" / "chunk_000000.h5"
    with h5py.File(part, "r+") as fh:
        fh["stress"][0, 3, 0] += 1.0
    out = tmp_path / "data.h5"
    cfg_obj = G.load_config(cfg)
    with pytest.raises(UserError, match="checksum mismatch"):
        G.generate(cfg_obj, str(cfg), output=out, progress=False)


def test_parts_from_another_config_are_reported(tmp_path):
    cfg = write_config(tmp_path)
    interrupted(cfg, 1)
    write_config(tmp_path, seed=4)  # same output, different paths
    with pytest.raises(UserError, match="data.h5.parts.*different config"):
        G.generate(G.load_config(cfg), str(cfg), progress=False)


class Poisoned(Material):
    """J2 that fails for any point beyond |eps| > fail_above and reports a large Hill-Mandel residual
    beyond |eps| > hm_above (a stand-in for an RVE that diverges / violates Hill-Mandel)."""

    def __init__(self, fail_above: float, hm_above: float):
        super().__init__()
        self.inner = J2Plasticity(**J2)
        self.fail_above, self.hm_above = fail_above, hm_above

    def initial_state(self, n):
        return self.inner.initial_state(n)

    def update(self, strain, dt, state):
        norm = torch.linalg.norm(strain, dim=1)
        bad = norm > self.fail_above
        if bad.any():
            raise MaterialConvergenceError("poisoned point", failed=bad)
        out = self.inner.update(strain, dt, state)
        self.info = {"hill_mandel": torch.where(norm > self.hm_above, 1e-3, 1e-12),
                     "iterations": torch.full_like(norm, 2.0)}
        return out


def test_a_retried_point_does_not_take_over_the_substeps_of_the_one_before():
    """Point-by-point retries integrate each point afresh: two virgin copper Taylor cells with the
    same step match what the crystal keeps of the last update (same old state, same step), and the
    second took over the first's substeps (4e-4 off its own answer) until they were dropped."""
    from fe2nn.materials.registry import build_material

    def cell():
        return build_material({"model": "rve", "solver": "taylor", "material": "copper",
                               "microstructure": {"n_grains": 12, "grid": 16, "seed": 3}}, "c.toml")

    z = torch.zeros(1, 6, dtype=torch.float64)
    a = 5e-4 * torch.tensor([[1.0, -0.35, -0.35, 0.0, 0.0, 0.0]], dtype=torch.float64)
    b = 5e-4 * torch.tensor([[0.2, 1.0, -0.6, 0.5, 0.0, 0.0]], dtype=torch.float64)
    dt = torch.tensor([0.25], dtype=torch.float64)  # large for copper: its grains substep
    m = cell()
    G._substepped(m, z, a, dt, m.initial_state(1), 8)
    after_a = G._substepped(m, z, b, dt, m.initial_state(1), 8)
    alone = cell()
    b_alone = G._substepped(alone, z, b, dt, alone.initial_state(1), 8)
    assert torch.equal(after_a[0], b_alone[0])


def test_screening_rejects_failing_and_hill_mandel_samples(tmp_path):
    cfg_file = write_config(tmp_path)
    cfg = G.load_config(cfg_file)
    codes, fams = G.sample_layout(cfg)
    from fe2nn.data.paths import sample_paths

    strain, _ = sample_paths(fams, cfg.n_steps, cfg.seed, range(len(fams)))
    peak = np.linalg.norm(strain, axis=2).max(axis=1)
    order = np.argsort(peak)[::-1]  # largest peak first
    fail_above = 0.5 * (peak[order[0]] + peak[order[1]])
    hm_above = 0.5 * (peak[order[1]] + peak[order[2]])
    out = tmp_path / "screened.h5"
    summary = G.generate(cfg, str(cfg_file), output=out, material=Poisoned(fail_above, hm_above), progress=False)
    assert summary["n_rejected_not_converged"] == 1 and summary["n_rejected_hill_mandel"] == 1
    assert summary["n_accepted"] == 9
    A = arrays(out)
    assert not A["converged"][order[0]] and not A["accepted"][order[0]]
    assert A["converged"][order[1]] and not A["accepted"][order[1]]
    # the failed sample keeps its valid prefix and NaN after the failure
    assert np.isnan(A["stress"][order[0], -1]).all() or np.linalg.norm(strain[order[0], -1]) > fail_above
    train = load_dataset(out, split="train")
    assert len(train) == 9 and set(train.index.tolist()) == set(range(11)) - {order[0], order[1]}
    assert torch.isfinite(train.stress).all()
    assert len(load_dataset(out, split="rejected")) == 2
    # every other sample matches the unpoisoned material (the per-point fallback changes nothing)
    ok = [i for i in range(11) if i not in order[:2]]
    plain = G.simulate(J2Plasticity(**J2), strain[ok], A["time"][ok])
    np.testing.assert_allclose(A["stress"][ok], plain["stress"], rtol=1e-12, atol=1e-4)


class FailsOnLargeSteps(Material):
    """J2 that fails whenever a point's strain increment exceeds ``max_step``: sub-stepping rescues it."""

    def __init__(self, max_step):
        super().__init__()
        self.inner, self.max_step = J2Plasticity(**J2), max_step

    def initial_state(self, n):
        return dict(self.inner.initial_state(n), prev=torch.zeros(n, 6, dtype=torch.float64))

    def update(self, strain, dt, state):
        step = torch.linalg.norm(strain - state["prev"], dim=1)
        if (step > self.max_step).any():
            raise MaterialConvergenceError("step too large")  # no mask: every point is retried alone
        inner = {k: v for k, v in state.items() if k != "prev"}
        stress, tangent, new = self.inner.update(strain, dt, inner)
        return stress, tangent, dict(new, prev=strain.clone())


def test_substepping_recovers_from_large_increments(tmp_path):
    cfg_file = write_config(tmp_path, n_steps=10)
    cfg = G.load_config(cfg_file)
    _, fams = G.sample_layout(cfg)
    from fe2nn.data.paths import sample_paths

    strain, time = sample_paths(fams[:4], cfg.n_steps, cfg.seed, range(4))
    steps = np.linalg.norm(np.diff(strain, axis=1), axis=2)
    res = G.simulate(FailsOnLargeSteps(0.6 * steps.max()), strain, time, max_substeps=4)
    assert res["converged"].all()
    plain = G.simulate(J2Plasticity(**J2), strain, time)
    # J2 radial return along a straight strain increment is nearly step-size independent: sub-stepped
    # increments differ from one-step ones only by the plastic path dependence within the step
    scale = np.abs(plain["stress"]).max()
    np.testing.assert_allclose(res["stress"], plain["stress"], atol=0.05 * scale)
    assert (res["iterations"] >= 0).all()
    res = G.simulate(FailsOnLargeSteps(0.1 * steps.max()), strain, time, max_substeps=4)
    assert not res["converged"].all()
    assert np.isnan(res["stress"][~res["converged"], -1]).all()


@pytest.mark.parametrize("extra, needle", [
    ("max_strian = 0.1\n", "paths.cyclic.max_strian"),
    ("[paths.cyclic2]\ncount = 1\n", "paths.cyclic2"),
    ("[paths.random_walk.rate]\n", "paths.random_walk"),
])
def test_bad_config_names_key(tmp_path, extra, needle):
    cfg = write_config(tmp_path, extra=extra)
    with pytest.raises(UserError) as err:
        G.load_config(cfg)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and str(cfg) in msg


@pytest.mark.parametrize("text, needle", [
    ('output = "x.h5"\nbatch_size = 0\n[paths.monotonic]\ncount = 1\n', "batch_size"),
    ('output = "x.h5"\n[rve]\nsolver = "fem"\n[paths.monotonic]\ncount = 1\n', "rve.solver"),
    ('output = "x.h5"\n', "count"),
    ('output = "x.h5"\n[paths.monotonic]\ncount = 2\nrate = [1e-2, 1e-3]\n', "paths.monotonic.rate"),
    ('[paths.monotonic]\ncount = 2\n', "output"),
])
def test_bad_config_values_name_key(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(UserError) as err:
        G.load_config(p)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_config_and_bad_option_one_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('output = "x.h5"\n[paths.monotonic]\ncount = 2\nrate = [1e-2, 1e-3]\n')
    assert_one_line_error(run_cli("generate", str(p)), "paths.monotonic.rate", str(p))
    cfg = write_config(tmp_path, extra="")
    cfg.write_text(cfg.read_text().replace('material = "aluminium"', 'material = "aluminium"\noptions = {tol = 1}'))
    assert_one_line_error(run_generate(cfg), "rve.options.tol")


TAYLOR = """
output = "al.h5"
n_steps = 8
seed = 5
batch_size = 2
hill_mandel_tol = 1e-8
[rve]
solver = "taylor"
material = "aluminium"
[rve.microstructure]
n_grains = 4
grid = 8
seed = 3
[paths.random_walk]
count = 2
[paths.monotonic]
count = 1
strain = [0.005, 0.01]
[paths.cyclic]
count = 1
"""


def test_taylor_dataset_end_to_end(tmp_path):
    """A tiny aluminium Taylor dataset: converged, Hill-Mandel-consistent, equal to direct RVE calls."""
    pytest.importorskip("fe2nn.micro.taylor")
    pytest.importorskip("fe2nn.micro.microstructure")
    from fe2nn.micro.rve import build_rve

    cfg_file = tmp_path / "al.toml"
    cfg_file.write_text(TAYLOR)
    cfg = G.load_config(cfg_file)
    summary = G.generate(cfg, str(cfg_file), progress=False)
    assert summary["n_accepted"] == 4, summary
    A, attrs = read_arrays(tmp_path / "al.h5")
    assert np.isfinite(A["stress"]).all() and A["converged"].all()
    assert (A["hill_mandel"] <= 1e-8).all()
    assert '"n_grains": 4' in attrs["microstructure"] and "hash" in attrs["microstructure"]
    # the monotonic sample (|eps| >= 0.005) has yielded: its von Mises stress lies between the
    # Schmid bound 2 xi0 (Taylor factor >= 2, xi0 = 31 MPa) and well below the elastic estimate
    # 3 G_Voigt eps_eq (about 320 MPa with G_Voigt = (C11 - C12 + 3 C44) / 5 = 26.3 GPa)
    from fe2nn import mandel

    mono = int(np.nonzero(A["family"] == 1)[0][0])
    final = torch.from_numpy(A["stress"][mono, -1])
    vm = float(mandel.von_mises(final))
    eps_eq = float(mandel.equivalent_strain(torch.from_numpy(A["strain"][mono, -1])))
    g_voigt = (106.75e9 - 60.41e9 + 3 * 28.34e9) / 5
    assert 2 * 31e6 < vm < 0.6 * 3 * g_voigt * eps_eq, (vm, eps_eq)
    rve = build_rve(cfg.rve, str(cfg_file))
    for i in range(4):
        state = rve.initial_state(1)
        dt = np.diff(A["time"][i])
        for t in range(1, cfg.n_steps + 1):
            s, _, state = rve.update(torch.from_numpy(A["strain"][i, t:t + 1]), float(dt[t - 1]), state)
            np.testing.assert_allclose(A["stress"][i, t], s[0].numpy(), rtol=1e-9, atol=1e-9 * 1e8)


def test_rve_from_saved_microstructure(tmp_path):
    """rve.microstructure.file gives the same RVE (and metadata hash) as the Voronoi keys it was made from."""
    from fe2nn.micro.microstructure import Microstructure
    from fe2nn.micro.rve import MicrostructureConfig, RVEConfig, build_rve, describe

    Microstructure.voronoi(3, 6, seed=1).save(tmp_path / "ms.h5")
    cfg_file = str(tmp_path / "gen.toml")
    voronoi = RVEConfig(microstructure=MicrostructureConfig(n_grains=3, grid=6, seed=1))
    saved = RVEConfig(microstructure=MicrostructureConfig(file="ms.h5"))
    assert describe(saved, cfg_file)["microstructure"]["hash"] == describe(voronoi, cfg_file)["microstructure"]["hash"]
    eps = torch.tensor([[2e-3, -1e-3, -1e-3, 0.0, 5e-4, 0.0]])
    a, b = build_rve(voronoi, cfg_file), build_rve(saved, cfg_file)
    sa = a.update(eps, 1.0, a.initial_state(1))[0]
    sb = b.update(eps, 1.0, b.initial_state(1))[0]
    assert torch.equal(sa, sb)
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="bad.h5"):
        build_rve(RVEConfig(microstructure=MicrostructureConfig(file="bad.h5")), cfg_file)
    with pytest.raises(UserError, match="rve.microstructure.file"):
        build_rve(RVEConfig(microstructure=MicrostructureConfig(file="missing.h5")), cfg_file)


def test_existing_output_from_another_config_and_overwrite(tmp_path):
    j2 = 'solver = "j2"\noptions = {E = 70e9, nu = 0.33, sigma_y = 100e6, H_iso = 1e9}\n'
    cfg = write_config(tmp_path, n_steps=6)
    cfg.write_text(cfg.read_text().replace('solver = "taylor"\nmaterial = "aluminium"\n', j2)
                   .replace("[rve.microstructure]\nn_grains = 3\ngrid = 6\nseed = 1\n", ""))
    G.generate(G.load_config(cfg), str(cfg), progress=False)
    first = content_hash(tmp_path / "data.h5")
    cfg.write_text(cfg.read_text().replace("seed = 3", "seed = 4"))
    with pytest.raises(UserError, match="data.h5: output exists"):
        G.generate(G.load_config(cfg), str(cfg), progress=False)
    s = G.generate(G.load_config(cfg), str(cfg), progress=False, overwrite=True)
    assert s["n_samples"] == 11 and content_hash(tmp_path / "data.h5") != first


def test_recorded_paths_dataset_on_two_ranks(tmp_path):
    """paths.recorded: the RVE along point histories of a solve's strain_paths.h5; the dataset
    names the family, carries the file's hash, equals the sampled paths and does not depend on
    the rank count; a missing file is a one-line error naming the key."""
    from test_paths import write_strain_paths

    from fe2nn.data import paths as P

    write_strain_paths(tmp_path / "sp.h5", steps=4, t_end=40.0)
    text = TAYLOR + '[paths.recorded]\ncount = 3\nfile = "sp.h5"\n'
    for n in (1, 2):
        (tmp_path / f"r{n}.toml").write_text(text.replace('output = "al.h5"', f'output = "r{n}.h5"'))
        proc = run_generate(tmp_path / f"r{n}.toml", n=n)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    A, attrs = read_arrays(tmp_path / "r1.h5")
    B, _ = read_arrays(tmp_path / "r2.h5")
    for k in ("strain", "stress", "time", "family"):
        np.testing.assert_array_equal(A[k], B[k])
    assert list(attrs["family_names"])[-1] == "recorded" and A["accepted"].all()
    cfg = G.load_config(tmp_path / "r1.toml")
    assert '"file_sha256": "%s"' % cfg.paths.recorded.file_sha256 in attrs["paths"]
    rec = np.flatnonzero(A["family"] == P.FAMILY_NAMES.index("recorded"))
    assert rec.size == 3
    strain, time = P.sample_paths([cfg.paths.recorded] * 3, 8, 5, rec)
    np.testing.assert_array_equal(A["strain"][rec], strain)
    np.testing.assert_array_equal(A["time"][rec], time)
    (tmp_path / "sp.h5").unlink()
    assert_one_line_error(run_generate(tmp_path / "r1.toml"), "paths.recorded.file", "sp.h5")
