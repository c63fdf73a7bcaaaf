"""Strain-path families: bounds, rates, step counts, reproducibility and each family's features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fe2nn import mandel
from fe2nn.config import parse
from fe2nn.data import paths as P
from fe2nn.errors import UserError

T = 120
N = 40


def _increments(strain, time):
    de = np.diff(strain, axis=0)
    return de, np.linalg.norm(de, axis=1), np.diff(time)


@pytest.mark.parametrize("name", P.SYNTHETIC)
def test_shapes_start_and_positive_steps(name):
    cfg = P.FAMILIES[name]()
    for i in range(10):
        strain, time = P.sample_path(cfg, T, seed=5, index=i)
        assert strain.shape == (T + 1, 6) and time.shape == (T + 1,)
        assert np.all(strain[0] == 0.0) and time[0] == 0.0
        assert np.all(np.diff(time) > 0.0)
        assert np.all(np.isfinite(strain))


@pytest.mark.parametrize("name", P.SYNTHETIC)
def test_reproducible_and_seed_dependent(name):
    cfg = P.FAMILIES[name]()
    a = P.sample_path(cfg, T, seed=11, index=3)
    b = P.sample_path(cfg, T, seed=11, index=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.allclose(a[0], P.sample_path(cfg, T, seed=12, index=3)[0])
    assert not np.allclose(a[0], P.sample_path(cfg, T, seed=11, index=4)[0])
    # independent of batching: a sample in a batch equals the sample alone
    strain, time = P.sample_paths([cfg] * 3, T, 11, [7, 3, 9])
    assert np.array_equal(strain[1], a[0]) and np.array_equal(time[1], a[1])


def test_random_walk_bounds_rates_holds_reversals():
    cfg = P.RandomWalk(max_strain=0.01, rate=[1e-4, 1e-1], step_strain=[5e-5, 5e-4], segments=[4, 8],
                       hold_probability=0.4, reversal_probability=0.6)
    holds = reversals = 0
    rates = []
    for i in range(N):
        strain, time = P.sample_path(cfg, T, seed=1, index=i)
        norm = np.linalg.norm(strain, axis=1)
        assert norm.max() <= cfg.max_strain * (1 + 1e-12)
        # the documented consequence for the equivalent strain
        eq = mandel.equivalent_strain(torch.from_numpy(strain)).numpy()
        assert eq.max() <= np.sqrt(2 / 3) * cfg.max_strain * (1 + 1e-12)
        de, dn, dt = _increments(strain, time)
        loading = dn > 0
        r = dn[loading] / dt[loading]
        assert r.min() >= cfg.rate[0] * (1 - 1e-9) and r.max() <= cfg.rate[1] * (1 + 1e-9)
        rates.append(r)
        holds += int((~loading).sum() > 0)
        # a reversal: a loading increment pointing against the previous loading increment
        d = de[loading]
        cos = (d[1:] * d[:-1]).sum(1) / (np.linalg.norm(d[1:], axis=1) * np.linalg.norm(d[:-1], axis=1))
        reversals += int((cos < -0.5).any())
        # smooth within segments: most consecutive loading increments are nearly parallel
        assert np.median(cos) > 0.9
    rates = np.concatenate(rates)
    assert rates.max() / rates.min() >= 100.0  # at least two decades of strain rate
    assert holds >= N // 4 and reversals >= N // 4


def test_random_walk_reaches_bound_and_stays_inside():
    cfg = P.RandomWalk(max_strain=0.002, step_strain=[2e-4, 4e-4], reversal_probability=0.0)
    norms = [np.linalg.norm(P.sample_path(cfg, T, 2, i)[0], axis=1).max() for i in range(10)]
    assert max(norms) <= 0.002 * (1 + 1e-12)
    assert max(norms) >= 0.002 * (1 - 1e-9)  # the walk is stopped at the bound, not squashed away from it


def test_monotonic_is_proportional_within_bounds():
    cfg = P.Monotonic(strain=[0.003, 0.01], rate=[1e-3, 1e-1])
    for i in range(N):
        strain, time = P.sample_path(cfg, T, seed=3, index=i)
        final = np.linalg.norm(strain[-1])
        assert cfg.strain[0] <= final <= cfg.strain[1]
        de, dn, dt = _increments(strain, time)
        d = strain[-1] / final
        np.testing.assert_allclose(de @ d, dn, rtol=1e-12)  # every increment along the same direction
        r = dn / dt
        assert np.ptp(r) <= 1e-12 * r.max() and cfg.rate[0] <= r[0] <= cfg.rate[1]
        assert dn.max() / dn.min() > 1.2  # non-uniform steps


def test_cyclic_alternates_sign_with_amplitude():
    cfg = P.Cyclic(amplitude=[0.004, 0.008], max_mean=0.0, cycles=[2, 2], max_strain=0.01)
    for i in range(N):
        strain, time = P.sample_path(cfg, T, seed=4, index=i)
        norm = np.linalg.norm(strain, axis=1)
        assert norm.max() <= cfg.amplitude[1] * (1 + 1e-12)
        d = strain[np.argmax(norm)] / norm.max()
        x = strain @ d
        np.testing.assert_allclose(np.abs(x), norm, rtol=1e-9, atol=1e-15)  # uniaxial in direction d
        signs = np.sign(x[np.abs(x) > 1e-3 * norm.max()])
        assert (np.diff(signs) != 0).sum() >= 3  # tension, compression, tension, compression
        assert x.max() > 0.9 * norm.max() and x.min() < -0.9 * norm.max()  # both signs reach the amplitude
        de, dn, dt = _increments(strain, time)
        assert (dn / dt).max() <= cfg.rate[1] * (1 + 1e-9)


def test_cyclic_mean_strain_respects_bound():
    cfg = P.Cyclic(amplitude=[0.006, 0.008], max_mean=0.005, max_strain=0.01)
    means = []
    for i in range(N):
        strain, _ = P.sample_path(cfg, T, seed=6, index=i)
        assert np.linalg.norm(strain, axis=1).max() <= cfg.max_strain * (1 + 1e-12)
        means.append(np.abs(strain[T // 2:].mean(0)).sum())
    assert max(means) > 1e-3  # non-zero mean strains occur


@pytest.mark.parametrize("data, key", [
    ({"rate": [1e-1, 1e-4]}, "paths.random_walk.rate"),
    ({"rate": [0.0, 1e-4]}, "paths.random_walk.rate"),
    ({"segments": [0, 3]}, "paths.random_walk.segments"),
    ({"hold_probability": 1.5}, "paths.random_walk.hold_probability"),
    ({"max_strian": 0.1}, "paths.random_walk.max_strian"),
])
def test_bad_family_config_names_key(data, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
        parse(P.RandomWalk, data, "gen.toml", "paths.random_walk")
    assert "\n" not in str(err.value) and "gen.toml" in str(err.value)


def test_plot_examples(tmp_path):
    out = tmp_path / "paths.png"
    P.plot_examples(str(out), n_steps=50, per_family=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _reversals(strain):
    """Loading reversals per path: consecutive moving increments at more than 120 degrees."""
    de = np.diff(strain, axis=0)
    n = np.linalg.norm(de, axis=1)
    move = n > 0
    d = de[move] / n[move, None]
    return int(np.sum((d[1:] * d[:-1]).sum(1) < -0.5))


def test_reversal_walks_reverse_more_and_travel_further():
    """Same generator as random_walk, other defaults: more reversals and more strain travelled per path
    (so that reversals reach reverse plastic flow); its own family name and code after the others."""
    rw, rv = P.RandomWalk(), P.ReversalWalk()
    assert P.family_name(rv) == "reversal_walk" and P.family_name(rw) == "random_walk"
    # appended: older configs keep their codes
    assert P.FAMILY_NAMES[:4] == ("random_walk", "monotonic", "cyclic", "reversal_walk")
    assert P.FAMILY_NAMES[4:] == ("recorded",)
    stats = {}
    for name, cfg in (("random_walk", rw), ("reversal_walk", rv)):
        rev, travel = [], []
        for i in range(200):
            s, _ = P.sample_path(cfg, T, seed=1, index=i)
            rev.append(_reversals(s))
            travel.append(np.linalg.norm(np.diff(s, axis=0), axis=1).sum())
        stats[name] = (np.mean(rev), np.mean(travel))
    assert stats["reversal_walk"][0] > 1.1 * stats["random_walk"][0]
    assert stats["reversal_walk"][1] > 1.5 * stats["random_walk"][1]


def test_appending_reversal_walks_keeps_earlier_samples():
    """A generate config that adds reversal walks numbers the other families' samples as before, so
    those samples (pure in seed and index) are bit-identical to the smaller data set's."""
    from fe2nn.data.generate import GenerateConfig, sample_layout

    base = parse(GenerateConfig, {"output": "x.h5", "paths": {"random_walk": {"count": 5}, "cyclic": {"count": 2}}})
    more = parse(GenerateConfig, {"output": "x.h5", "paths": {"random_walk": {"count": 5}, "cyclic": {"count": 2},
                                                              "reversal_walk": {"count": 3}}})
    c0, f0 = sample_layout(base)
    c1, f1 = sample_layout(more)
    assert np.array_equal(c1[:7], c0) and list(c1[7:]) == [P.FAMILY_NAMES.index("reversal_walk")] * 3
    assert f1[:7] == f0 and all(type(f) is P.ReversalWalk for f in f1[7:])


def write_strain_paths(path, steps=10, t_end=5.0):
    """A strain_paths.h5 as fe2nn solve writes it: point 0 barely moves, point 1 loads along e11
    and back, point 2 shears; uniform times."""
    import h5py

    t = np.linspace(0.0, t_end, steps + 1)
    s = np.sin(np.pi * t / t_end)
    strain = np.zeros((3, steps + 1, 6))
    strain[0, :, 0] = 1e-6 * s
    strain[1, :, 0], strain[1, :, 1] = 4e-3 * s, -2e-3 * s
    strain[2, :, 5] = 3e-3 * t / t_end
    with h5py.File(path, "w") as fh:
        fh["strain"], fh["time"] = strain, t
        fh["x"], fh["cell"], fh["point"] = np.zeros((3, 3)), np.arange(3), np.zeros(3, int)
    return strain, t


def test_recorded_paths_are_resampled_point_histories(tmp_path):
    strain, t = write_strain_paths(tmp_path / "sp.h5")
    cfg = P.Recorded(count=1, file=str(tmp_path / "sp.h5"), min_path=1e-3)
    seen = set()
    for i in range(20):
        eps, time = P.sample_path(cfg, 40, seed=1, index=i)  # 40 = 4 x the 10 recorded steps
        assert eps.shape == (41, 6) and np.all(eps[0] == 0.0) and time[0] == 0.0
        np.testing.assert_allclose(time, np.linspace(0.0, 5.0, 41), rtol=0, atol=1e-12)
        k = int(np.argmax([np.abs(eps[::4] - strain[j]).max() < 1e-15 for j in range(3)]))
        np.testing.assert_array_equal(eps[::4], strain[k])  # every recorded state kept
        np.testing.assert_allclose(eps[2], 0.5 * (strain[k, 0] + strain[k, 1]), rtol=1e-12)  # linear between
        seen.add(k)
    assert seen == {1, 2}  # point 0 (path 4e-6 < min_path) is never drawn
    a, b = P.sample_path(cfg, 40, 1, 7), P.sample_path(cfg, 40, 1, 7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert len(cfg.file_sha256) == 64
    # time scaling divides the strain rates, log-uniform within [min, max]
    scaled = P.Recorded(count=1, file=cfg.file, time_scale=[2.0, 8.0])
    ends = [P.sample_path(scaled, 10, 3, i)[1][-1] for i in range(30)]
    assert 10.0 <= min(ends) and max(ends) <= 40.0 and max(ends) > 2 * min(ends)


def test_recorded_file_errors_name_the_problem(tmp_path):
    import h5py

    write_strain_paths(tmp_path / "sp.h5")
    with pytest.raises(UserError, match="min_path"):
        P.Recorded(count=1, min_path=1.0).load(tmp_path / "sp.h5")
    with pytest.raises(UserError, match="has changed"):
        P.Recorded(count=1, file_sha256="0" * 64).load(tmp_path / "sp.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(UserError, match="not a strain_paths.h5"):
        P.Recorded(count=1).load(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "moved.h5", "w") as fh:
        fh["strain"], fh["time"] = np.ones((2, 3, 6)), np.arange(3.0)
    with pytest.raises(UserError, match="start from zero strain"):
        P.Recorded(count=1).load(tmp_path / "moved.h5")
    with pytest.raises(UserError, match="paths.recorded"):
        parse(P.Recorded, {"count": 2}, "gen.toml", "paths.recorded")
