"""fe2nn train / fe2nn evaluate on a tiny synthetic J2 dataset: loss reduction, exact seeding,
checkpoint + resume, k sweep, evaluation report and plots, one-line user errors."""
from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import run_cli
from test_rno_synth import make_dataset

from fe2nn.errors import UserError
from fe2nn.surrogate import evaluate as ev
from fe2nn.surrogate import train as tr
from fe2nn.surrogate.card import load_surrogate, sha256_file


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("rno_data")
    return make_dataset(d / "j2.h5", {"random_walk": 16, "monotonic": 3, "cyclic": 3}, T=16, seed=3)


def _config(tmp_path, dataset, name="cfg", epochs=12, extra=""):
    p = tmp_path / f"{name}.toml"
    p.write_text(f"""
[data]
path = "{dataset}"
split = [0.75, 0.125, 0.125]
[model]
k = 2
f_hidden = [16, 16]
g_hidden = [8]
[training]
epochs = {epochs}
batch_size = 4
lr = 1e-2
patience = 1000
dt_factors = [0.5, 1, 2]
checkpoint_every = 5
{extra}
[output]
dir = "{tmp_path / name}"
""")
    return p


def test_training_reduces_loss_and_exports(tmp_path, dataset):
    # max_substep_strain = 0: the exported model integrates exactly as in training
    cfg = _config(tmp_path, dataset, epochs=25, extra="max_substep_strain = 0")
    assert tr.main([str(cfg), "--no-progress"]) == 0
    out = tmp_path / "cfg"
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == 25
    first, last = hist[0]["loss"], min(h["loss"] for h in hist[-5:])
    # the first epoch already starts from the least-squares linear skip (secant stiffness)
    assert last < 0.5 * first, (first, last)
    model, card = load_surrogate(out)
    assert card["k"] == 2 and card["architecture"]["f_layers"] == [14, 16, 16, 6]
    assert card["dataset"]["train_families"] == ["random_walk"]
    split = card["dataset"]["split"]
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(16))
    assert len(split["val"]) == 2 and len(split["test"]) == 2
    env = card["envelope"]
    assert len(env["strain_min"]) == 6 and env["equivalent_strain_max"] > 0
    assert card["errors"]["val_dt_x1"]["mean"] == pytest.approx(card["training"]["best_val_rel_l2"], rel=1e-10)


def test_training_is_reproducible_and_resume_is_exact(tmp_path, dataset):
    a = _config(tmp_path, dataset, "a", epochs=8)
    b = _config(tmp_path, dataset, "b", epochs=8)
    c = _config(tmp_path, dataset, "c", epochs=8)
    assert tr.main([str(a), "--no-progress"]) == 0
    assert tr.main([str(b), "--no-progress"]) == 0
    wa, wb = (sha256_file(tmp_path / n / "weights.safetensors") for n in "ab")
    assert wa == wb  # same seed -> bit-identical training
    # interrupted after 3 epochs (checkpoint), then resumed: identical to the uninterrupted run
    assert tr.main([str(c), "--no-progress", "--stop-after", "3"]) == 0
    assert (tmp_path / "c" / "checkpoint.pt").is_file() and not (tmp_path / "c" / "weights.safetensors").exists()
    assert tr.main([str(c), "--no-progress", "--resume"]) == 0
    assert sha256_file(tmp_path / "c" / "weights.safetensors") == wa
    ha = json.loads((tmp_path / "a" / "history.json").read_text())
    hc = json.loads((tmp_path / "c" / "history.json").read_text())
    assert ha == hc
    # a different seed gives a different model
    d = _config(tmp_path, dataset, "d", epochs=8, extra="seed = 1")
    assert tr.main([str(d), "--no-progress"]) == 0
    assert sha256_file(tmp_path / "d" / "weights.safetensors") != wa


def test_resume_refuses_other_config_and_missing_checkpoint(tmp_path, dataset):
    c = _config(tmp_path, dataset, "r", epochs=4)
    with pytest.raises(UserError, match="no checkpoint"):
        tr.main([str(c), "--no-progress", "--resume"])
    assert tr.main([str(c), "--no-progress", "--stop-after", "1"]) == 0
    c.write_text(c.read_text().replace("lr = 1e-2", "lr = 5e-3"))
    with pytest.raises(UserError, match="different configuration"):
        tr.main([str(c), "--no-progress", "--resume"])


def test_sweep_k_prints_validation_error_per_k(tmp_path, dataset, capsys):
    cfg = _config(tmp_path, dataset, "s", epochs=3)
    assert tr.main([str(cfg), "--no-progress", "--sweep-k", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "k sweep" in out and "lowest validation error" in out
    sweep = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert set(sweep) == {"0", "1"}
    assert load_surrogate(tmp_path / "s" / "k0")[0].k == 0 and load_surrogate(tmp_path / "s" / "k1")[0].k == 1


def test_train_config_errors_are_one_line(tmp_path, dataset):
    cfg = _config(tmp_path, dataset, "e", extra="bogus = 1")
    with pytest.raises(UserError, match=r"unknown key 'training.bogus'"):
        tr.main([str(cfg)])
    cfg = _config(tmp_path, dataset, "e2")
    good = cfg.read_text()
    cfg.write_text(good.replace("dt_factors = [0.5, 1, 2]", "dt_factors = [0.3]"))
    with pytest.raises(UserError, match="dt_factors"):
        tr.main([str(cfg)])
    cfg.write_text(good.replace('[model]', '[model]\nactivation = "relu"'))
    with pytest.raises(UserError, match="activation"):
        tr.main([str(cfg)])
    with pytest.raises(UserError, match="--sweep-k"):
        tr.main([str(_config(tmp_path, dataset, "e3")), "--sweep-k", "a,b"])
    p = run_cli("train", str(tmp_path / "missing.toml"))
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "config file not found" in p.stderr
    cfg.write_text(good.replace('[data]', f'[data]\nextra_paths = ["{dataset}", "nope.h5"]'))
    with pytest.raises(UserError, match=r"e2.toml: key 'data.extra_paths\[1\]' = '.*nope.h5': dataset file not found"):
        tr.main([str(cfg)])


def test_evaluate_cli_writes_report_and_plots(tmp_path, dataset):
    cfg = _config(tmp_path, dataset, "m", epochs=4)
    assert tr.main([str(cfg), "--no-progress"]) == 0
    out = tmp_path / "eval"
    p = run_cli("evaluate", str(tmp_path / "m"), str(dataset), "--out", str(out))
    assert p.returncode == 0, p.stderr
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["groups"]) == {"random_walk", "monotonic", "cyclic"}
    rw = rep["groups"]["random_walk"]
    assert rw["kind"] == "held-out test split" and rw["n_paths"] == 2
    assert rep["groups"]["cyclic"]["kind"] == "kept out of training" and rep["groups"]["cyclic"]["n_paths"] == 3
    for g in rep["groups"].values():
        assert set(g["errors"]) == {"dt x 1/4", "dt x 1", "dt x 4"}
        for s in g["errors"].values():
            assert 0 <= s["mean"] <= s["p95"] + 1e-15 <= s["max"] + 2e-15
    for g in rep["groups"].values():
        assert len(g["along_path"]["mean_error"]) == 16 and 0 <= g["along_path"]["direction_share"] <= 1
        growth = g["along_path"]["growth"]
        assert set(growth) == {"straight", "turn", "reversal", "hold"}
        assert sum(v["share_of_increments"] for v in growth.values()) == pytest.approx(1.0)
    assert "random_walk: the error grows" in p.stdout
    assert "error_along_path.png" in rep["plots"]
    for name in rep["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the report's dt x 1 test error is the exporter's test error (same split, same metric)
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert rw["errors"]["dt x 1"]["mean"] == pytest.approx(card["errors"]["test_dt_x1"]["mean"], rel=1e-10)
    assert "random_walk" in p.stdout and "targets" in p.stdout


def test_evaluate_keeps_a_surrogates_own_evaluation(tmp_path, dataset):
    """Without --out, fe2nn evaluate writes SURROGATE/evaluation: it reruns the command that made the
    report there, but refuses (one line, nothing written) to replace it by an evaluation of the same
    weights on another dataset or without checks it has, unless --overwrite; retrained weights
    replace it.  Plots that the new report does not list are removed with the old one."""
    import shutil

    import h5py
    import numpy as np

    assert tr.main([str(_config(tmp_path, dataset, "m", epochs=1)), "--no-progress"]) == 0
    own = tmp_path / "m" / "evaluation"
    ev.main([str(tmp_path / "m"), str(dataset)])
    first = json.loads((own / "report.json").read_text())
    assert first["weights_sha256"] == json.loads((tmp_path / "m" / "card.json").read_text())["weights_sha256"]
    assert first["plots"] and all((own / n).is_file() for n in first["plots"])
    ev.main([str(tmp_path / "m"), str(dataset)])  # the same command again: a reproduction, allowed
    other = tmp_path / "other.h5"
    shutil.copy(dataset, other)
    with h5py.File(other, "r+") as fh:  # another content hash (and no recipe attributes)
        fh["stress"][0, 1, 0] = np.nextafter(fh["stress"][0, 1, 0], np.inf)
    before = (own / "report.json").read_bytes()
    for args, why in (([str(other)], "made on " + dataset.name), (["--no-plots"], "with plots, which this run leaves out")):
        data = args[0] if args[0].endswith(".h5") else str(dataset)
        p = run_cli("evaluate", str(tmp_path / "m"), data, *[a for a in args if not a.endswith(".h5")])
        assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
        assert why in p.stderr and "--out DIR" in p.stderr and "--overwrite" in p.stderr, p.stderr
        assert (own / "report.json").read_bytes() == before
    p = run_cli("evaluate", str(tmp_path / "m"), str(dataset), "--no-plots", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert json.loads((own / "report.json").read_text())["plots"] == [] and not list(own.glob("*.png"))
    # retrained weights: their old evaluation is stale and is replaced without asking
    assert tr.main([str(_config(tmp_path, dataset, "m", epochs=2)), "--no-progress"]) == 0
    ev.main([str(tmp_path / "m"), str(other)])
    assert json.loads((own / "report.json").read_text())["dataset"] == str(other)


def test_evaluate_finds_the_test_split_of_regenerated_data(tmp_path):
    """Data regenerated from the same config on another machine (values differing in their last bits,
    so another content hash) keeps the card's held-out test split, by the recipe hash; data of
    another recipe is another dataset."""
    import shutil

    import h5py
    import numpy as np

    def with_recipe(path, seed):  # the attributes fe2nn generate writes
        with h5py.File(path, "r+") as fh:
            fh.attrs["paths"] = json.dumps({"seed": seed, "n_steps": 16})
            fh.attrs["solver"] = json.dumps({"solver": "j2", "options": {}, "max_substeps": 16})
        return path

    data = with_recipe(make_dataset(tmp_path / "orig.h5", {"random_walk": 16, "cyclic": 2}, T=16, seed=3), 3)
    assert tr.main([str(_config(tmp_path, data, "rg", epochs=2)), "--no-progress"]) == 0
    entry = json.loads((tmp_path / "rg" / "card.json").read_text())["dataset"]
    assert entry["recipe_sha256"] == tr.read_dataset(data)["recipe_sha256"] is not None
    regen = tmp_path / "regen.h5"
    shutil.copy(data, regen)
    with h5py.File(regen, "r+") as fh:
        fh["stress"][3, 4, 0] = np.nextafter(fh["stress"][3, 4, 0], np.inf)
    other = with_recipe(make_dataset(tmp_path / "other.h5", {"random_walk": 16, "cyclic": 2}, T=16, seed=4), 4)
    for path, match, kind, n in ((data, "content", "held-out test split", 2), (regen, "recipe", "held-out test split", 2),
                                 (other, "none", "training family, other dataset (all samples)", 16)):
        p = run_cli("evaluate", str(tmp_path / "rg"), str(path), "--out", str(tmp_path / match), "--no-plots")
        assert p.returncode == 0, p.stderr
        rep = json.loads((tmp_path / match / "report.json").read_text())
        assert rep["dataset_match"] == match and rep["same_dataset_as_training"] == (match != "none")
        assert rep["groups"]["random_walk"]["kind"] == kind and rep["groups"]["random_walk"]["n_paths"] == n
        assert ("regenerated from the same config" in p.stdout) == (match == "recipe")


def test_evaluate_bad_arguments_one_line(tmp_path, dataset):
    for args, msg in [((str(tmp_path / "nope"), str(dataset)), "surrogate card not found"),
                      ((str(tmp_path),), "required"),
                      ((str(tmp_path), str(dataset), "--bogus"), "unrecognized")]:
        with pytest.raises(UserError, match=msg) as err:
            ev.main(list(args))
        assert "\n" not in str(err.value)
    p = run_cli("evaluate", str(tmp_path / "nope"), str(dataset))  # through the CLI: one line, status 2
    assert p.returncode == 2 and "surrogate card not found" in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr


def test_path_errors_metric_is_relative_l2():
    import numpy as np

    t = np.ones((1, 4, 6))
    assert ev.path_errors(1.02 * t, t)[0] == pytest.approx(0.02)
    assert float(torch.tensor(ev.stats(np.array([0.0, 1.0]))["mean"])) == pytest.approx(0.5)


def test_epoch_log_lines_say_the_time_left(tmp_path, dataset, capsys):
    cfg = _config(tmp_path, dataset, "log", epochs=3)
    assert tr.main([str(cfg), "--no-progress"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch ")]
    assert len(lines) == 3
    assert all(re.search(r", \d+ s, (\d+\.\d\d? s|\d+ min \d\d s) left$", x) for x in lines[:2]), lines
    assert re.search(r", \d+ s$", lines[2]), lines[2]  # the last epoch: nothing left


def test_time_limit_exports_best_model(tmp_path, dataset, capsys):
    cfg = _config(tmp_path, dataset, "tl", epochs=50, extra="time_limit = 1e-6")
    assert tr.main([str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "time limit" in out
    assert "epoch 1/50: loss " in out  # without the progress bar: one log line per epoch
    hist = json.loads((tmp_path / "tl" / "history.json").read_text())
    assert len(hist) == 1 and load_surrogate(tmp_path / "tl")[1]["training"]["epochs_run"] == 1


def test_float32_training_with_increment_form_exports_float64(tmp_path, dataset):
    """training.dtype = float32 (faster on CPU) still exports float64 weights; the exported model's
    validation error equals the float32 one to float32 round-off accumulated over a path."""
    cfg = _config(tmp_path, dataset, "f32", epochs=6, extra='dtype = "float32"').read_text()
    cfg = cfg.replace("g_hidden = [8]", "g_hidden = [8]\ng_increment = true")
    p = tmp_path / "f32.toml"
    p.write_text(cfg)
    assert tr.main([str(p), "--no-progress"]) == 0
    model, card = load_surrogate(tmp_path / "f32")
    assert card["architecture"]["g_increment"] is True and card["architecture"]["g_layers"] == [14, 8, 14]
    assert all(t.dtype == torch.float64 for t in model.state_dict().values())
    assert card["errors"]["val_dt_x1"]["mean"] == pytest.approx(card["training"]["best_val_rel_l2"], rel=1e-4)


def test_card_paths_are_relative_to_the_surrogate(tmp_path, dataset):
    """The card names its dataset and config paths relative to the surrogate directory, so a
    surrogate moved together with its data (or checked out elsewhere) still points at it."""
    cfg = _config(tmp_path, dataset, "rel", epochs=1)
    assert tr.main([str(cfg), "--no-progress"]) == 0
    card = json.loads((tmp_path / "rel" / "card.json").read_text())
    for p in (card["dataset"]["path"], card["training"]["config"]["data"]["path"]):
        assert not p.startswith("/") and (tmp_path / "rel" / p).resolve() == dataset.resolve()
    assert card["training"]["config"]["output"]["dir"] == "."


def test_init_from_warm_starts_and_checks_architecture(tmp_path, dataset):
    """training.init_from continues from an exported surrogate (fine-tuning): the first epoch
    starts at the exported model's validation error, not at a fresh model's, also when [model]
    grows it (more internal variables, residual blocks, G's trial-stress input); a smaller architecture is one clear error."""
    assert tr.main([str(_config(tmp_path, dataset, "base", epochs=10)), "--no-progress"]) == 0
    base = json.loads((tmp_path / "base" / "card.json").read_text())
    fine = _config(tmp_path, dataset, "fine", epochs=1, extra=f'init_from = "{tmp_path / "base"}"\nlr_min = 0\n')
    fine.write_text(fine.read_text().replace("lr = 1e-2", "lr = 1e-12"))
    assert tr.main([str(fine), "--no-progress"]) == 0
    hist = json.loads((tmp_path / "fine" / "history.json").read_text())
    # with a vanishing learning rate the weights stay the exported ones
    assert hist[0]["val"] == pytest.approx(base["training"]["best_val_rel_l2"], rel=1e-9)
    card = json.loads((tmp_path / "fine" / "card.json").read_text())
    assert card["training"]["config"]["training"]["init_from"] == "../base"  # portable, like the data path
    # a larger [model] grows the exported one (rno.grow): the same function at the start
    bigger = _config(tmp_path, dataset, "bigger", epochs=1, extra=f'init_from = "{tmp_path / "base"}"\nlr_min = 0\n')
    # (more internal variables, a residual block in F and in G, and G fed the trial stress)
    bigger.write_text(bigger.read_text().replace("k = 2", "k = 3\nf_blocks = 1\ng_blocks = 1\ng_trial = true")
                      .replace("lr = 1e-2", "lr = 1e-12"))
    assert tr.main([str(bigger), "--no-progress"]) == 0
    hist = json.loads((tmp_path / "bigger" / "history.json").read_text())
    assert hist[0]["val"] == pytest.approx(base["training"]["best_val_rel_l2"], rel=1e-9)
    arch = json.loads((tmp_path / "bigger" / "card.json").read_text())["architecture"]
    assert (arch["k"], arch["f_blocks"], arch["g_blocks"], arch["g_trial"]) == (3, 1, 1, True)
    other = _config(tmp_path, dataset, "other", epochs=1, extra=f'init_from = "{tmp_path / "base"}"')
    other.write_text(other.read_text().replace("k = 2", "k = 1"))
    with pytest.raises(UserError, match="init_from.*architecture.*cannot become.*can only grow"):
        tr.main([str(other), "--no-progress"])


def test_init_from_a_wider_surrogate_cuts_it(tmp_path, dataset, capsys):
    """A narrower [model] with training.init_from starts from the exported model cut to its widths
    (rno.shrink): at its first validation it is much closer to the data than a fresh model of the
    same size, and trains on from there."""
    assert tr.main([str(_config(tmp_path, dataset, "base", epochs=10)), "--no-progress"]) == 0
    base = json.loads((tmp_path / "base" / "card.json").read_text())["training"]["best_val_rel_l2"]
    val = {}
    for name, extra in (("cut", f'init_from = "{tmp_path / "base"}"\n'), ("fresh", "")):
        cfg = _config(tmp_path, dataset, name, epochs=1, extra=extra + "lr_min = 0\n")
        cfg.write_text(cfg.read_text().replace("f_hidden = [16, 16]", "f_hidden = [10, 10]")
                       .replace("g_hidden = [8]", "g_hidden = [5]").replace("lr = 1e-2", "lr = 1e-12"))
        assert tr.main([str(cfg), "--no-progress"]) == 0
        val[name] = json.loads((tmp_path / name / "history.json").read_text())[0]["val"]
        arch = json.loads((tmp_path / name / "card.json").read_text())["architecture"]
        assert arch["f_hidden"] == [10, 10] and arch["g_hidden"] == [5]
    assert "cut by pruning, fitted along" in capsys.readouterr().out
    assert val["cut"] < min(1.5 * base, 0.5 * val["fresh"]), (base, val)


def test_export_sets_substep_limit_from_training_increments(tmp_path, dataset):
    """By default the card's integration.max_substep_strain is the largest strain increment of the
    training paths, and the loaded model uses it."""
    assert tr.main([str(_config(tmp_path, dataset, "sub", epochs=1)), "--no-progress"]) == 0
    model, card = load_surrogate(tmp_path / "sub")
    ds = tr.read_dataset(dataset)
    inc = torch.linalg.vector_norm(torch.diff(torch.as_tensor(ds["strain"][card["dataset"]["split"]["train"]]), dim=1),
                                   dim=-1)
    assert card["integration"]["max_substep_strain"] == pytest.approx(float(inc.max()), rel=1e-12)
    assert model.max_substep_strain == card["integration"]["max_substep_strain"]
    # fine-tuned, it keeps the sub-step length it trained with (init_from's), also on data whose
    # increments are longer: exporting with those would integrate big steps it never took in training
    fine = _config(tmp_path, dataset, "fine", epochs=1, extra=f'init_from = "{tmp_path / "sub"}"')
    assert tr.main([str(fine), "--no-progress"]) == 0
    h = card["integration"]["max_substep_strain"]
    assert json.loads((tmp_path / "fine" / "card.json").read_text())["integration"]["max_substep_strain"] == h
    small = _config(tmp_path, dataset, "small", epochs=1, extra="max_substep_strain = 1e-4")
    assert tr.main([str(small), "--no-progress"]) == 0
    assert 1e-4 < h and load_surrogate(tmp_path / "small")[0].max_substep_strain == 1e-4
    fine2 = _config(tmp_path, dataset, "fine2", epochs=1, extra=f'init_from = "{tmp_path / "small"}"')
    assert tr.main([str(fine2), "--no-progress"]) == 0
    assert load_surrogate(tmp_path / "fine2")[0].max_substep_strain == 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("extra", ["", "rate_stability_weight = 10.0\nrate_stability_margin = 1e-3"])
def test_training_on_cuda_matches_cpu(tmp_path, dataset, extra):
    """Same seed, same batches: CUDA and CPU training differ only in float64 summation order
    (with the rate-stability term too: its eigenvalues on the GPU); the CUDA-trained export loads
    on the CPU."""
    hist = {}
    for dev in ("cpu", "cuda"):
        cfg = _config(tmp_path, dataset, dev, epochs=4, extra=f'device = "{dev}"\n{extra}')
        assert tr.main([str(cfg), "--no-progress"]) == 0
        hist[dev] = [h["loss"] for h in json.loads((tmp_path / dev / "history.json").read_text())]
    assert hist["cuda"] == pytest.approx(hist["cpu"], rel=1e-8)
    model, card = load_surrogate(tmp_path / "cuda")
    assert all(t.device.type == "cpu" and t.dtype == torch.float64 for t in model.state_dict().values())


def test_cuda_graphs_setting(tmp_path, dataset):
    """training.cuda_graphs only chooses how batches run: it is not part of the config hash (a run
    resumes across it), it must be a boolean, and on a CPU batches always run eagerly."""
    on = tr.load_config(_config(tmp_path, dataset, "on", extra="cuda_graphs = true"))
    off = tr.load_config(_config(tmp_path, dataset, "on", extra="cuda_graphs = false"))
    assert on.training.cuda_graphs and not off.training.cuda_graphs
    assert tr._config_hash(on) == tr._config_hash(off)
    with pytest.raises(UserError, match="cuda_graphs"):
        tr.load_config(_config(tmp_path, dataset, "bad", extra='cuda_graphs = "yes"'))
    fams = ["random_walk"]
    ds = tr.combine_datasets([tr.read_dataset(on.data.path)], fams, "x")
    split = tr.split_parts(ds, fams, on.data.split, 0, 0, "x")
    trainer = tr.Trainer(on, ds, split, tmp_path / "on", torch.device("cpu"), progress=False)
    assert not trainer.uses_cuda_graphs() and trainer.eager_reason() == "not a CUDA device"
    trainer.device = torch.device("cuda")  # the reasons only (nothing runs there)
    assert trainer.uses_cuda_graphs() and trainer.eager_reason() == ""
    trainer.model.max_substep_strain = 1e-4
    assert trainer.eager_reason() == "the model trains with sub-steps"
    trainer.model.max_substep_strain = 0.0
    trainer.cfg.training.rate_stability_weight = 1.0
    assert "rate-stability" in trainer.eager_reason()
    trainer.cfg.training.cuda_graphs = False
    assert trainer.eager_reason() == "training.cuda_graphs = false"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("extra, graphed", [("", True), ("rate_stability_weight = 10.0\nrate_stability_margin = 1e-3", False)])
def test_cuda_graphs_match_eager_training(tmp_path, dataset, monkeypatch, extra, graphed):
    """Replayed CUDA graphs train exactly as eager batches (same kernels): identical loss histories
    and weights; one graph per (batch size, step-size factor), and none with the rate-stability
    term, whose eigenvalue solver synchronises."""
    recorded = []

    class Counting(tr._GraphedBatch):
        def __init__(self, *a, **k):
            recorded.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(tr, "_GraphedBatch", Counting)
    hist, weights = {}, {}
    for g in ("true", "false"):
        cfg = _config(tmp_path, dataset, f"g{g}", epochs=4, extra=f'device = "cuda"\ncuda_graphs = {g}\n{extra}')
        assert tr.main([str(cfg), "--no-progress"]) == 0
        hist[g] = [h["loss"] for h in json.loads((tmp_path / f"g{g}" / "history.json").read_text())]
        weights[g] = load_surrogate(tmp_path / f"g{g}")[0].state_dict()
    assert (len(recorded) > 0) == graphed and len(recorded) <= 3  # dt_factors [0.5, 1, 2], one batch size
    assert hist["true"] == pytest.approx(hist["false"], rel=1e-12, abs=0)
    for k, v in weights["true"].items():
        assert torch.allclose(v, weights["false"][k], rtol=1e-10, atol=0), k


def test_increment_loss_term(tmp_path, dataset):
    """increments() starts from the initial stress; the weighted term enters the training loss (a
    prediction right in value but lagging one step has a large increment error) and a negative
    weight is a one-line config error."""
    sig0 = torch.zeros(1, 1, 6)
    target = torch.linspace(1.0, 4.0, 4)[None, :, None] * torch.ones(1, 4, 6)
    dp, dt_ = tr.increments(sig0, target, target)
    assert torch.equal(dp, dt_) and torch.allclose(dt_, torch.ones(1, 4, 6))
    lag = torch.cat([sig0, target[:, :-1]], 1)  # one step late: increments (0, 1, 1, 1) against (1, 1, 1, 1)
    from fe2nn.surrogate.rno import relative_l2
    assert float(relative_l2(*tr.increments(sig0, lag, target))) == pytest.approx(0.5)
    a = _config(tmp_path, dataset, "w0", epochs=2)
    b = _config(tmp_path, dataset, "w1", epochs=2, extra="increment_weight = 1.0")
    assert tr.main([str(a), "--no-progress"]) == 0 and tr.main([str(b), "--no-progress"]) == 0
    ha = json.loads((tmp_path / "w0" / "history.json").read_text())
    hb = json.loads((tmp_path / "w1" / "history.json").read_text())
    # same seed and first batch: the weighted run's first-epoch loss carries the extra term
    assert hb[0]["loss"] > ha[0]["loss"]
    bad = _config(tmp_path, dataset, "w2", extra="increment_weight = -1")
    with pytest.raises(UserError, match="increment_weight"):
        tr.main([str(bad)])


def test_rate_stability_term_makes_the_short_step_tangent_positive_definite(tmp_path, dataset):
    """A model trained with training.rate_stability_weight keeps sym(RNO.rate_tangent) positive
    definite at the training paths' points (up to the margin), where the same training without it
    leaves negative eigenvalues; the history records the validation term and the card the plain
    validation error of the best epoch; the stability probe of fe2nn evaluate sees the difference
    at short steps (1/64 of an increment)."""
    a = _config(tmp_path, dataset, "s0", epochs=6)
    b = _config(tmp_path, dataset, "s1", epochs=6,
                extra="rate_stability_weight = 100.0\nrate_stability_margin = 1e-3")
    assert tr.main([str(a), "--no-progress"]) == 0 and tr.main([str(b), "--no-progress"]) == 0
    d = tr.read_dataset(dataset)
    strain, time = torch.as_tensor(d["strain"]), torch.as_tensor(d["time"])
    plain, _ = load_surrogate(tmp_path / "s0")
    stable, card = load_surrogate(tmp_path / "s1")
    with torch.no_grad():
        assert float(tr.rate_instability(plain, strain, time)) > 0
        assert float(tr.rate_instability(stable, strain, time)) == 0.0
    hist = json.loads((tmp_path / "s1" / "history.json").read_text())
    assert all("val_rate_instability" in h for h in hist)
    best = [h for h in hist if h["epoch"] == card["training"]["best_epoch"]][0]
    assert card["training"]["best_val_rel_l2"] == pytest.approx(best["val"], rel=1e-12)
    probe_plain = ev.stability(plain, d["strain"], d["time"])
    probe_stable = ev.stability(stable, d["strain"], d["time"])
    assert set(probe_stable) == {"1", "0.25", "0.0625", "0.015625"}
    assert probe_stable["0.015625"]["non_pd_share"] < probe_plain["0.015625"]["non_pd_share"]


def test_selection_margin_scores_epochs_by_tangents_that_are_not_positive_definite(tmp_path, dataset):
    """training.selection_margin = 0 (the default): the run trains exactly as with -1 (the training
    margin; the margin only enters the best-epoch score); the history records the term at both
    margins, the one at margin 0 never above the one at the training margin; the exported epoch
    minimizes the validation error + w x the term at margin 0; a negative margin other than -1 is a
    one-line config error."""
    stable = "rate_stability_weight = 100.0\nrate_stability_margin = 0.05"
    a = _config(tmp_path, dataset, "m", epochs=4, extra=stable + "\nselection_margin = -1.0")
    b = _config(tmp_path, dataset, "m0", epochs=4, extra=stable)
    assert tr.main([str(a), "--no-progress"]) == 0 and tr.main([str(b), "--no-progress"]) == 0
    ha = json.loads((tmp_path / "m" / "history.json").read_text())
    hb = json.loads((tmp_path / "m0" / "history.json").read_text())
    assert [h["loss"] for h in hb] == [h["loss"] for h in ha]
    assert [h["val_rate_instability"] for h in hb] == [h["val_rate_instability"] for h in ha]
    assert all("val_selection_instability" not in h for h in ha)
    assert all(0.0 <= h["val_selection_instability"] <= h["val_rate_instability"] for h in hb)
    assert any(h["val_rate_instability"] > 0 for h in hb)  # the training margin is not yet met
    card = json.loads((tmp_path / "m0" / "card.json").read_text())
    scores = [h["val"] + 100.0 * h["val_selection_instability"] for h in hb]
    assert card["training"]["best_epoch"] == hb[min(range(len(scores)), key=scores.__getitem__)]["epoch"]
    card_a = json.loads((tmp_path / "m" / "card.json").read_text())
    scores_a = [h["val"] + 100.0 * h["val_rate_instability"] for h in ha]
    assert card_a["training"]["best_epoch"] == ha[min(range(len(scores_a)), key=scores_a.__getitem__)]["epoch"]
    bad = _config(tmp_path, dataset, "m1", extra="selection_margin = -0.5")
    with pytest.raises(UserError, match="selection_margin"):
        tr.main([str(bad)])


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
@pytest.mark.parametrize("selection, best", [("selection_margin = -1.0", 1), ("", 2)])
def test_best_epoch_score_at_the_selection_margin(tmp_path, dataset, monkeypatch, selection, best):
    """Scripted epochs (w = 50, training margin 2e-3): epoch 1 at 3.0 % with every eigenvalue of
    sym(A) above the margin; epoch 2 at 2.9 % with all of them at 1e-3 (inside the margin, positive
    definite); epoch 3 at 2.8 % with a tenth of them at -0.01.  Scored at the training margin, epoch 1
    wins (2.9 % + 50 x 1e-3 = 7.9 %); scored at margin 0, epoch 2 (3: 2.8 % + 50 x 1e-3 = 7.8 %)."""
    val = {1: 0.030, 2: 0.029, 3: 0.028}
    lam = {1: torch.full((100,), 3e-3), 2: torch.full((100,), 1e-3),
           3: torch.cat([torch.full((10,), -0.01), torch.full((90,), 3e-3)])}
    monkeypatch.setattr(tr.Trainer, "train_epoch", lambda self: 0.1)
    monkeypatch.setattr(tr.Trainer, "validation_error", lambda self: val[self.epoch + 1])
    calls = []
    def eigenvalues(model, strain, time):  # noqa: E306 - one call per epoch (fewer than 256 validation paths)
        calls.append(1)
        return lam[len(calls)]
    monkeypatch.setattr(tr, "rate_eigenvalues", eigenvalues)
    cfg = _config(tmp_path, dataset, "scripted", epochs=3, extra="rate_stability_weight = 50.0\n"
                  "rate_stability_margin = 2e-3\n" + selection)
    assert tr.main([str(cfg), "--no-progress"]) == 0
    card = json.loads((tmp_path / "scripted" / "card.json").read_text())
    assert card["training"]["best_epoch"] == best
    assert card["training"]["best_val_rel_l2"] == pytest.approx(val[best])
    hist = json.loads((tmp_path / "scripted" / "history.json").read_text())
    assert [h["val_rate_instability"] for h in hist] == pytest.approx([0.0, 1e-3, 1.2e-3])
    if not selection:
        assert [h["val_selection_instability"] for h in hist] == pytest.approx([0.0, 0.0, 1e-3])


def test_material_stability_probe_on_closed_form_laws(dataset):
    """evaluate.material_stability: a hardening J2 law keeps a positive definite tangent at every
    probe fraction; a law that softens past eps11 = 1.5e-3 (sigma11 = E eps11 - c <eps11 - 1e-3>^2)
    is flagged on exactly the increments whose probe strain lies past that point."""
    from conftest import softening_material

    from fe2nn.materials.j2 import J2Plasticity

    d = tr.read_dataset(dataset)
    strain, time = d["strain"][:4], d["time"][:4]
    j2 = ev.material_stability(J2Plasticity(70e9, 0.3, 100e6, H_iso=2e9), strain, time)
    assert set(j2) == {"1", "0.25", "0.0625", "0.015625"}
    assert all(v["non_pd_share"] == 0.0 and v["min_eigenvalue"] > 0 for v in j2.values())

    soft = ev.material_stability(softening_material(1e9, 1e12, 1e-3), strain, time)
    e = torch.as_tensor(strain)
    for key, v in soft.items():
        f = float(key)
        probe = e[:, :-1, 0] + f * (e[:, 1:, 0] - e[:, :-1, 0])
        assert v["non_pd_share"] == pytest.approx(float((probe >= 1.5e-3).double().mean()), abs=1e-12)
    assert max(v["non_pd_share"] for v in soft.values()) > 0


def test_tangent_errors_against_closed_form_laws(dataset):
    """evaluate.tangent_errors (fe2nn evaluate --rve-probe) on elastic laws in closed form: 1.1 E
    against E is 10 % off on every increment, whole tangent and along it; another Poisson ratio
    gives sqrt(9 dK^2 + 20 dmu^2) / sqrt(9 K^2 + 20 mu^2) (Mandel: |P_vol|^2 = 1, |P_dev|^2 = 5) and,
    along a uniaxial strain path, |dC e1| / |C e1| with C e1 = (lambda + 2 mu, lambda, lambda, 0, 0, 0).
    Two J2 laws with different hardening agree until they yield, then differ."""
    from fe2nn.materials.elastic import LinearElastic
    from fe2nn.materials.j2 import J2Plasticity

    d = tr.read_dataset(dataset)
    strain, time = d["strain"], d["time"]
    e = ev.tangent_errors(ev.probe_material(LinearElastic(77e9, 0.3), strain, time)[1],
                          ev.probe_material(LinearElastic(70e9, 0.3), strain, time)[1], strain)
    for key in ("frobenius", "along_increment"):
        assert e[key]["mean"] == pytest.approx(0.1, rel=1e-12) and e[key]["max"] == pytest.approx(0.1, rel=1e-12)

    T = 20
    uni = torch.zeros(1, T + 1, 6, dtype=torch.float64)
    uni[0, :, 0] = torch.linspace(0.0, 4e-3, T + 1, dtype=torch.float64)
    t = torch.linspace(0.0, 2.0, T + 1, dtype=torch.float64)[None]

    def lame(E, nu):
        return E * nu / ((1 + nu) * (1 - 2 * nu)), E / (2 * (1 + nu))

    (l1, m1), (l2, m2) = lame(70e9, 0.25), lame(70e9, 0.35)
    K1, K2 = l1 + 2 * m1 / 3, l2 + 2 * m2 / 3
    e = ev.tangent_errors(ev.probe_material(LinearElastic(70e9, 0.25), uni, t)[1],
                          ev.probe_material(LinearElastic(70e9, 0.35), uni, t)[1], uni)
    fro = ((9 * (K1 - K2) ** 2 + 20 * (m1 - m2) ** 2) / (9 * K2 ** 2 + 20 * m2 ** 2)) ** 0.5
    along = (((l1 + 2 * m1 - l2 - 2 * m2) ** 2 + 2 * (l1 - l2) ** 2) / ((l2 + 2 * m2) ** 2 + 2 * l2 ** 2)) ** 0.5
    assert e["frobenius"]["mean"] == pytest.approx(fro, rel=1e-10) and e["frobenius"]["max"] == pytest.approx(fro, rel=1e-10)
    assert e["along_increment"]["mean"] == pytest.approx(along, rel=1e-10)

    # uniaxial strain yields at eps11 = sigma_y / (2 mu) = 1.86e-3 (increment 10 of 20); the two
    # hardening moduli differ only after that
    hard, harder = J2Plasticity(70e9, 0.3, 100e6, H_iso=2e9), J2Plasticity(70e9, 0.3, 100e6, H_iso=6e9)
    C_ref = ev.probe_material(hard, uni, t)[1]
    C = ev.probe_material(harder, uni, t)[1]
    rel = torch.linalg.matrix_norm(C - C_ref) / torch.linalg.matrix_norm(C_ref)
    assert torch.all(rel[0, :8] == 0.0) and torch.all(rel[0, -5:] > 0.01)
    assert ev.tangent_errors(C, C_ref, uni)["frobenius"]["max"] == pytest.approx(float(rel.max()), rel=1e-12)


def test_rate_tangent_is_the_short_step_limit_of_the_tangent():
    """(r_s f dt / sigma_s) d sigma/d eps of a step over the fraction f of an increment (same strain
    rate) tends to RNO.rate_tangent as f -> 0, linearly in f; and it is differentiable in F's weights
    (autograd against a finite difference)."""
    from fe2nn.surrogate.rno import RNO, RNOArch

    torch.manual_seed(0)
    model = RNO(RNOArch(k=3, f_hidden=[16, 16], g_hidden=[8], g_increment=True), 2e-3, 1e-3, 5e7).double()
    torch.nn.init.normal_(model.F_linear.weight, std=0.3)
    n = 7
    e1 = 2e-3 * torch.randn(n, 6, dtype=torch.float64)
    e0 = e1 - 3e-4 * torch.randn(n, 6, dtype=torch.float64)
    xi0 = 0.5 * torch.randn(n, 3, dtype=torch.float64)
    dt = torch.full((n,), 0.2, dtype=torch.float64)
    s = model.scales
    gaps = []
    for f in (1e-2, 1e-4):
        with torch.no_grad():
            _, C, xi = model.step_with_tangent(e0 + f * (e1 - e0), e0, f * dt, xi0)
            A = model.rate_tangent(e0 + f * (e1 - e0), e0, f * dt, xi)
        gaps.append(float((C * (s[1] * f * dt[:, None, None] / s[2]) - A).abs().max() / A.abs().max()))
    assert gaps[1] < 2e-3 and gaps[1] < 2e-2 * gaps[0], gaps
    W = model.F[0].weight
    A = model.rate_tangent(e1, e0, dt, xi0)
    g = torch.autograd.grad(A.sum(), W)[0][0, 7]
    with torch.no_grad():
        W[0, 7] += 1e-6
        fd = (model.rate_tangent(e1, e0, dt, xi0).sum() - A.sum()) / 1e-6
    assert float(g) == pytest.approx(float(fd), rel=1e-4, abs=1e-9)


def test_extra_datasets_keep_each_files_split(tmp_path, dataset):
    """data.extra_paths: the first file's split is the one it has alone (adding a file moves
    none of its samples), every file is split on its own, the card lists each file with its
    split, evaluate uses the extra file's own test split; a file of another RVE or path length
    is one clear error."""
    import h5py

    from test_rno_synth import make_dataset

    more = make_dataset(tmp_path / "more.h5", {"random_walk": 8, "cyclic": 2}, T=16, seed=11)
    alone = _config(tmp_path, dataset, "alone", epochs=2)
    both = _config(tmp_path, dataset, "both", epochs=2)
    both.write_text(both.read_text().replace("[model]", f'extra_paths = ["{more}"]\n[model]'))
    assert tr.main([str(alone), "--no-progress"]) == 0
    assert tr.main([str(both), "--no-progress"]) == 0
    a = json.loads((tmp_path / "alone" / "card.json").read_text())["dataset"]
    b = json.loads((tmp_path / "both" / "card.json").read_text())["dataset"]
    assert b["split"] == a["split"] and b["sha256"] == a["sha256"] and "extra" not in a
    (x,) = b["extra"]
    assert x["sha256"] == tr.read_dataset(more)["sha256"] and x["path"] == "../more.h5"
    assert sorted(x["split"]["train"] + x["split"]["val"] + x["split"]["test"]) == list(range(8))  # walks only
    assert len(x["split"]["test"]) == 1 and len(x["split"]["val"]) == 1
    # the whole training set: 12 + 6 walks; the envelope covers both files
    card = json.loads((tmp_path / "both" / "card.json").read_text())
    assert card["errors"]["train_dt_x1"]["n"] == 18
    assert card["training"]["config"]["data"]["extra_paths"] == ["../more.h5"]
    rep_dir = tmp_path / "ev_more"
    assert ev.main([str(tmp_path / "both"), str(more), "--out", str(rep_dir)]) == 0
    rep = json.loads((rep_dir / "report.json").read_text())
    assert rep["same_dataset_as_training"] and rep["groups"]["random_walk"]["kind"] == "held-out test split"
    assert rep["groups"]["random_walk"]["n_paths"] == 1 and rep["groups"]["cyclic"]["kind"] == "kept out of training"
    # another path length, another RVE: one line naming the file
    short = make_dataset(tmp_path / "short.h5", {"random_walk": 4}, T=8, seed=5)
    other = make_dataset(tmp_path / "other.h5", {"random_walk": 4}, T=16, seed=5)
    with h5py.File(other, "r+") as f:
        f.attrs["material"] = json.dumps({"law": "J2", "E": 1.0})
    for bad, msg in ((short, "8 increments per path"), (other, "another RVE material")):
        both.write_text(both.read_text().replace(str(more), str(bad)).replace(str(short), str(bad)))
        with pytest.raises(UserError, match=msg) as err:
            tr.main([str(both), "--no-progress"])
        assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_error_growth_by_turn_of_the_strain_path():
    """A hand-made path: straight on, a reversal, straight, two holds, a 90 degree turn, with a known
    error e_n at each increment: the growth e_n - e_{n-1} lands in the right group, and the groups'
    growth adds up to e_T - e_1.  A negated second path (the same turns) changes nothing."""
    import numpy as np

    x, y = np.eye(6)[0], np.eye(6)[1]
    inc = np.array([x, x, x, -x, -x, 0 * x, 0 * x, y]) * 1e-3  # increments 1..8
    strain = np.concatenate([np.zeros((1, 6)), np.cumsum(inc, axis=0)])[None]
    strain = np.concatenate([strain, -strain])
    a = np.array([0.01, 0.02, 0.03, 0.07, 0.08, 0.08, 0.09, 0.12])
    target = np.zeros((2, 8, 6))
    target[..., 0] = 1.0  # RMS stress 1
    pred = target.copy()
    pred[..., 1] = a  # |error| = a_n
    g = ev.error_growth(pred, target, strain)
    # increments 2..8: straight, straight, reversal, straight, hold, hold, turn
    expect = {"straight": (3, 0.03), "turn": (1, 0.03), "reversal": (1, 0.04), "hold": (2, 0.01)}
    for name, (count, growth) in expect.items():
        assert g[name]["share_of_increments"] == pytest.approx(count / 7)
        assert g[name]["mean_growth"] == pytest.approx(growth / count)
        assert g[name]["share_of_growth"] == pytest.approx(growth / (a[-1] - a[0]))
    assert sum(v["share_of_growth"] for v in g.values()) == pytest.approx(1.0)


def test_error_along_path_splits_direction_and_magnitude():
    """Closed form: a uniform 2 % magnitude error is flat along the path with no direction share;
    a rotation by a growing angle phi has error 2 sin(phi/2), of which sin(phi) is perpendicular."""
    import numpy as np

    T = 8
    t = np.zeros((1, T, 6))
    t[0, :, 0] = 1.0
    r = ev.error_along_path(1.02 * t, t)
    assert np.allclose(r["mean_error"], 0.02) and r["direction_share"] == pytest.approx(0.0, abs=1e-12)
    phi = np.linspace(0.01, 0.08, T)
    p = np.zeros_like(t)
    p[0, :, 0], p[0, :, 1] = np.cos(phi), np.sin(phi)
    r = ev.error_along_path(p, t)
    assert np.allclose(r["mean_error"], 2 * np.sin(phi / 2))
    # the perpendicular part is sin(phi), the parallel part 1 - cos(phi)
    share = (np.sin(phi) ** 2).sum() / ((np.sin(phi) ** 2 + (1 - np.cos(phi)) ** 2).sum())
    assert r["direction_share"] == pytest.approx(share, rel=1e-12)
    # the path's relative L2 error is the RMS over increments of e_n
    assert ev.path_errors(p, t)[0] == pytest.approx(np.sqrt(np.mean(np.array(r["mean_error"]) ** 2)), rel=1e-12)


def test_init_from_with_odd_trains_the_symmetrized_surrogate(tmp_path, dataset, capsys):
    """[model] odd = true with training.init_from continues from the exported plain model made odd
    (rno.symmetrized): at a vanishing learning rate the exported model is (sigma(eps) - sigma(-eps)) / 2
    of the plain one along the data's paths (J2 is odd too), and its card says odd."""
    import h5py

    assert tr.main([str(_config(tmp_path, dataset, "base", epochs=4)), "--no-progress"]) == 0
    cfg = _config(tmp_path, dataset, "odd", epochs=1, extra=f'init_from = "{tmp_path / "base"}"\nlr_min = 0\n')
    cfg.write_text(cfg.read_text().replace("lr = 1e-2", "lr = 1e-12").replace("g_hidden = [8]", "g_hidden = [8]\nodd = true"))
    assert tr.main([str(cfg), "--no-progress"]) == 0
    assert "made odd (rno.symmetrized)" in capsys.readouterr().out
    plain, _ = load_surrogate(tmp_path / "base")
    odd, card = load_surrogate(tmp_path / "odd")
    assert card["architecture"]["odd"] is True and odd.n_state == 2 * plain.k
    with h5py.File(dataset) as f:
        strain, time = torch.as_tensor(f["strain"][:8]), torch.as_tensor(f["time"][:8])
    with torch.no_grad():
        want = 0.5 * (plain.rollout(strain, time) - plain.rollout(-strain, time))
        got = odd.rollout(strain, time)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7 * float(want.abs().max()))
