"""Surrogate export/import: round trip, tampering, corruption, incompatibility, no pickle."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from fe2nn.errors import UserError
from fe2nn.surrogate.card import FORMAT_VERSION, load_surrogate, save_surrogate, update_card
from fe2nn.surrogate.material import RNOMaterial
from fe2nn.surrogate.rno import RNO, RNOArch

ENV = {"strain_min": [-1e-2] * 6, "strain_max": [1e-2] * 6, "equivalent_strain_max": 1e-2,
       "strain_rate_norm_max": 1e-1}


def _export(tmp_path, k=2):
    torch.manual_seed(0)
    m = RNO(RNOArch(k=k, f_hidden=[12, 12], g_hidden=[8], activation="gelu"), 2e-3, 1e-3, 5e7).double()
    d = tmp_path / "sur"
    save_surrogate(m, d, {"envelope": ENV, "dataset": {"sha256": "0" * 64}, "errors": {"test": 0.01}})
    return m, d


def _paths(n=3, T=6):
    g = torch.Generator().manual_seed(1)
    strain = torch.cumsum(1e-3 * torch.randn(n, T + 1, 6, generator=g), 1)
    strain[:, 0] = 0
    time = torch.linspace(0, 3, T + 1, dtype=torch.float64).expand(n, T + 1).contiguous()
    return strain, time


def test_round_trip_same_predictions(tmp_path):
    m, d = _export(tmp_path)
    m2, card = load_surrogate(d)
    assert card["format_version"] == FORMAT_VERSION and card["k"] == 2
    assert card["architecture"]["activation"] == "gelu" and card["architecture"]["g_layers"] == [8, 8, 2]
    assert card["normalization"]["time_scale"] == pytest.approx(2.0)
    assert card["units"]["stress"] == "Pa" and "Mandel" in card["notation"]
    assert len(card["weights_sha256"]) == 64 and card["envelope"] == ENV
    s, t = _paths()
    with torch.no_grad():
        torch.testing.assert_close(m2.rollout(s, t), m.rollout(s, t), rtol=0, atol=0)
    # the card path works as well, and the material reads the envelope from the card
    mat = RNOMaterial(d / "card.json")
    assert mat.k == 2 and mat.envelope_violation(torch.full((1, 6), 0.5), torch.zeros(1, 6)).item()
    update_card(d, {"errors": {"test": 0.02}})
    assert load_surrogate(d)[1]["errors"]["test"] == 0.02


def test_round_trip_elastic_split(tmp_path):
    torch.manual_seed(0)
    m = RNO(RNOArch(k=7, f_hidden=[12], g_hidden=[8], g_rate=True, xi_bound=5.0, elastic_split=True),
            2e-3, 1e-3, 5e7).double()
    with torch.no_grad():
        m.C_el.normal_()
    d = tmp_path / "sur"
    save_surrogate(m, d, {"envelope": ENV, "dataset": {"sha256": "0" * 64}, "errors": {"test": 0.01}})
    m2, card = load_surrogate(d)
    assert card["architecture"]["elastic_split"] is True and m2.C_el is not None
    s, t = _paths()
    with torch.no_grad():
        torch.testing.assert_close(m2.rollout(s, t), m.rollout(s, t), rtol=0, atol=0)


def test_round_trip_residual_blocks_and_a_card_that_drops_them(tmp_path):
    """Residual blocks and G's trial-stress input are part of the architecture on the card; a card
    that claims fewer blocks than its weights hold is refused (names the tensor), not loaded as
    another function."""
    torch.manual_seed(0)
    m = RNO(RNOArch(k=3, f_hidden=[12, 12], g_hidden=[8], g_increment=True, f_blocks=2, g_blocks=1, g_trial=True),
            2e-3, 1e-3, 5e7).double()
    d = tmp_path / "sur"
    save_surrogate(m, d, {"envelope": ENV})
    m2, card = load_surrogate(d)
    assert (card["architecture"]["f_blocks"], card["architecture"]["g_blocks"], card["architecture"]["g_trial"]) == (2, 1, True)
    s, t = _paths()
    with torch.no_grad():
        torch.testing.assert_close(m2.rollout(s, t), m.rollout(s, t), rtol=0, atol=0)
    from fe2nn.surrogate.summary import report, summarize, table
    text, row = report(summarize(d)), table([summarize(d)])
    assert "F 15-12-12-6 + 2 residual blocks, G 21-8-21 + 1 residual block (silu, increment form, " \
        "G sees the trial stress)" in text
    assert "| 12×12 + 2 residual blocks / 8 + 1 residual block |" in row
    c = d / "card.json"
    bad = json.loads(c.read_text())
    bad["architecture"]["f_blocks"] = 1
    c.write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"tensors do not match the card's architecture .*unexpected: .*F\.6\.weight"):
        load_surrogate(d)
    bad["architecture"]["f_blocks"] = -1
    c.write_text(json.dumps(bad))
    with pytest.raises(UserError, match="f_blocks .residual blocks. must be >= 0"):
        load_surrogate(d)


def test_tampered_weights_hash_mismatch(tmp_path):
    _, d = _export(tmp_path)
    w = d / "weights.safetensors"
    b = bytearray(w.read_bytes())
    b[-3] ^= 0x01  # flip one bit of a parameter
    w.write_bytes(bytes(b))
    with pytest.raises(UserError, match=r"weights.safetensors: sha256 does not match card.json"):
        load_surrogate(d)


def test_corrupt_card_json(tmp_path):
    _, d = _export(tmp_path)
    c = d / "card.json"
    c.write_text(c.read_text()[:-40])
    with pytest.raises(UserError, match=r"card.json: corrupt surrogate card \(invalid JSON"):
        load_surrogate(d)


def test_wrong_format_version_and_incompatible_architecture(tmp_path):
    _, d = _export(tmp_path)
    c = d / "card.json"
    good = json.loads(c.read_text())
    c.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(UserError, match="unsupported card format version 99"):
        load_surrogate(d)
    bad = json.loads(json.dumps(good))
    bad["architecture"]["strain_dim"] = 3
    c.write_text(json.dumps(bad))
    with pytest.raises(UserError, match="strain dimension must be 6"):
        load_surrogate(d)
    bad = json.loads(json.dumps(good))
    bad["architecture"]["f_hidden"] = [13, 12]  # does not match the stored tensors
    c.write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"tensor 'F.0.weight' has shape \(12, 14\).*\(13, 14\)"):
        load_surrogate(d)
    bad = json.loads(json.dumps(good))
    bad["k"] = 3
    bad["architecture"]["k"] = 3
    c.write_text(json.dumps(bad))
    with pytest.raises(UserError, match="weights.safetensors: tensor"):
        load_surrogate(d)
    bad = json.loads(json.dumps(good))
    del bad["normalization"]
    c.write_text(json.dumps(bad))
    with pytest.raises(UserError, match="missing key 'normalization'"):
        load_surrogate(d)
    c.write_text(json.dumps({**good, "format": "something-else"}))
    with pytest.raises(UserError, match="not an fe2nn surrogate card"):
        load_surrogate(d)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="surrogate card not found"):
        load_surrogate(tmp_path / "nowhere")
    _, d = _export(tmp_path)
    w = d / "weights.safetensors"
    data = w.read_bytes()
    w.unlink()
    with pytest.raises(UserError, match="weights.safetensors: surrogate weights file not found"):
        load_surrogate(d)
    # garbage whose hash is declared in the card: the hash passes, safetensors parsing fails cleanly
    w.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    import hashlib

    card = json.loads((d / "card.json").read_text())
    card["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="corrupt safetensors file"):
        load_surrogate(d)
    assert data  # the original was a real file
    card["weights_file"] = "../elsewhere.safetensors"
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="plain file name"):
        load_surrogate(d)


def test_loader_never_unpickles(tmp_path, monkeypatch):
    _, d = _export(tmp_path)

    def boom(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    model, card = load_surrogate(d)
    assert model.k == 2
    # a pickle file dressed up as weights is rejected (hash mismatch) before any parsing
    (d / "weights.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(UserError, match="sha256 does not match"):
        load_surrogate(d)


def test_cli_reports_bad_surrogate_in_one_line(tmp_path):
    from conftest import run_cli

    _, d = _export(tmp_path)
    (d / "card.json").write_text("{not json")
    p = run_cli("evaluate", str(d), str(tmp_path / "x.h5"))
    assert p.returncode == 2 and "corrupt surrogate card" in p.stderr and str(d / "card.json") in p.stderr
    assert p.stderr.strip().count("\n") == 0


def test_substep_setting_round_trip_and_bad_value(tmp_path):
    torch.manual_seed(0)
    m = RNO(RNOArch(k=2, f_hidden=[12], g_hidden=[8], g_increment=True), 2e-3, 1e-3, 5e7).double()
    m.max_substep_strain = 4e-4
    d = tmp_path / "sub"
    save_surrogate(m, d, {"envelope": ENV})
    m2, card = load_surrogate(d)
    assert m2.max_substep_strain == 4e-4 and card["integration"]["max_substep_strain"] == 4e-4
    strain, time = _paths()
    strain = 10 * strain  # increments well above 4e-4: sub-stepped in both
    with torch.no_grad():
        torch.testing.assert_close(m2.rollout(strain, time), m.rollout(strain, time), rtol=0, atol=0)
    c = json.loads((d / "card.json").read_text())
    c["integration"]["max_substep_strain"] = -3
    (d / "card.json").write_text(json.dumps(c))
    with pytest.raises(UserError, match="max_substep_strain"):
        load_surrogate(d)


def test_card_without_envelope_turns_the_monitor_off_and_says_so(tmp_path):
    """A card without a training envelope loads, but the material then writes no out-of-distribution
    fields, so the monitor reports itself off instead of 'all points inside'; inspect says so."""
    from conftest import run_cli

    from fe2nn.fe2 import OODMonitor, point_info_names

    m, d = _export(tmp_path)
    assert point_info_names(RNOMaterial(d)) == ("ood", "ood_strain", "ood_rate", "ood_path")
    c = json.loads((d / "card.json").read_text())
    del c["envelope"]
    (d / "card.json").write_text(json.dumps(c))
    assert point_info_names(RNOMaterial(d)) == ()
    assert "not applicable (material has no training envelope)" in OODMonitor().line()
    assert "training envelope: none in the card" in run_cli("inspect", str(d), check=True).stdout


def test_inspect_warns_about_an_evaluation_of_other_weights(tmp_path):
    """An evaluation report records the weights it evaluated; inspect flags one whose weights are
    no longer the card's (retrained since), and not one that records none (written before)."""
    from fe2nn.surrogate.summary import report, summarize

    _, d = _export(tmp_path)
    (d / "evaluation").mkdir()
    base = {"dataset": "x.h5", "groups": {}, "targets": {}}
    for sha, stale in ((None, False), (json.loads((d / "card.json").read_text())["weights_sha256"], False),
                       ("0" * 64, True)):
        (d / "evaluation" / "report.json").write_text(json.dumps(dict(base, weights_sha256=sha)))
        s = summarize(d)
        assert s["evaluation"]["stale"] is stale
        assert ("report below is of other weights" in report(s)) is stale


def test_card_with_inconsistent_k_and_exported_file_modes(tmp_path):
    """The card's top-level k must agree with its architecture; exported files get the permissions
    of any new file (0666 less the umask), also the weights that safetensors writes private."""
    import os

    m, d = _export(tmp_path)
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("weights.safetensors", "card.json"):
        assert (d / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    c = json.loads((d / "card.json").read_text())
    c["k"] = 8
    (d / "card.json").write_text(json.dumps(c))
    with pytest.raises(UserError, match=r"inconsistent surrogate card \(k = 8, architecture.k = 2\)"):
        load_surrogate(d)


def test_inspect_summarizes_a_surrogate_and_checks_its_weights(tmp_path):
    from conftest import run_cli

    m, d = _export(tmp_path)
    p = run_cli("inspect", str(d), check=True)
    n_params = sum(t.numel() for t in m.parameters())
    assert "k = 2 internal variables" in p.stdout and f"{n_params:,} parameters" in p.stdout
    assert "weights match the card" in p.stdout and "evaluation: none" in p.stdout
    s = json.loads(run_cli("inspect", str(d / "card.json"), "--json", check=True).stdout)
    assert s["k"] == 2 and s["parameters"] == n_params and s["f_layers"] == [14, 12, 12, 6]
    assert s["envelope"]["equivalent_strain_max"] == ENV["equivalent_strain_max"]
    weights = d / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    p = run_cli("inspect", str(d))
    assert p.returncode == 2 and "sha256 does not match" in p.stderr and p.stderr.strip().count("\n") == 0
    p = run_cli("inspect", "--table", str(d), str(tmp_path / "data.h5"))
    assert p.returncode == 2 and "data.h5: --table lists surrogates" in p.stderr


def test_the_surrogates_index_lists_every_shipped_surrogate_as_inspect_prints_it():
    """surrogates/README.md carries `fe2nn inspect --table surrogates/*/` verbatim: every
    directory, with the numbers of its card and evaluation report as they are now."""
    from conftest import REPO, run_cli

    dirs = sorted(str(p) + "/" for p in (REPO / "surrogates").iterdir() if (p / "card.json").is_file())
    table = run_cli("inspect", "--table", *dirs, check=True).stdout.strip()
    text = (REPO / "surrogates" / "README.md").read_text()
    start = text.index("<!-- table: fe2nn inspect --table surrogates/*/ -->\n") + len(
        "<!-- table: fe2nn inspect --table surrogates/*/ -->\n")
    assert text[start:text.index("\n<!-- end of table -->")] == table
    assert len(table.splitlines()) == len(dirs) + 2
