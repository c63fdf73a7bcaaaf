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


@pytest.mark.parametrize("name", P.FAMILY_NAMES)
def test_shapes_start_and_positive_steps(name):
    cfg = P.FAMILIES[name]()
    for i in range(10):
        strain, time = P.sample_path(cfg, T, seed=5, index=i)
        assert strain.shape == (T + 1, 6) and time.shape == (T + 1,)
        assert np.all(strain[0] == 0.0) and time[0] == 0.0
        assert np.all(np.diff(time) > 0.0)
        assert np.all(np.isfinite(strain))


@pytest.mark.parametrize("name", P.FAMILY_NAMES)
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
    assert P.FAMILY_NAMES.index("reversal_walk") == len(P.FAMILY_NAMES) - 1  # appended: older configs keep their codes
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
