"""The shipped configs as a user runs them: every one parses, and the two demos of the FE² issue
(``make demo``, ``make demo-validate``) do what their comments claim."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from fe2nn.errors import UserError


CONFIGS = sorted([*(REPO / "demos").glob("*.toml"), *(REPO / "surrogates").glob("*/*.toml")])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_parses(path):
    """Every config in demos/ and surrogates/ is read by its command's own loader (every key known,
    every value valid, the paths it names resolved), so a renamed or removed key cannot leave a
    recipe broken until someone runs it; the files a solve reads and the surrogate it starts from
    exist."""
    from fe2nn.data.generate import load_config as generate_config
    from fe2nn.macro.run import load_config as solve_config
    from fe2nn.surrogate.train import load_config as train_config
    from fe2nn.validate import load as validate_config

    text = path.read_text()
    if "[validate]" in text:
        scfg, _ = validate_config(path)
    elif "[mesh]" in text:
        scfg = solve_config(path)
    elif "[training]" in text or "[model]" in text:
        cfg = train_config(path)
        assert not cfg.training.init_from or Path(cfg.training.init_from).is_dir(), cfg.training.init_from
        return
    else:
        try:
            generate_config(path)
        except UserError as err:  # [paths.recorded] reads the strain paths of an earlier solve (results/)
            if "paths.recorded.file" not in str(err) or "not found" not in str(err):
                raise
        return
    assert (path.parent / scfg.mesh.file).is_file(), scfg.mesh.file
    if scfg.material.get("model") == "rno" and "results" not in scfg.material["surrogate"]:
        assert (path.parent / scfg.material["surrogate"] / "card.json").is_file()


def test_main_demo_stays_in_its_envelope_and_yields(tmp_path):
    """``make demo`` (2 ranks): 30 steps, Newton within the issue's 8 iterations per step, no point
    outside the surrogate's training envelope, the result files in place; and the plate does
    yield: its peak reaction is well below the elastic extrapolation of the first step, and load
    reversal leaves a reverse reaction after unloading (a plastic zone at the hole)."""
    out = tmp_path / "plate"
    proc = run_cli("solve", "demos/plate_hole_rno.toml", "--output", str(out), n=2, check=True, timeout=900)
    with open(out / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30
    assert max(int(r["iterations"]) for r in rows) <= 8
    assert all(int(r[k]) == 0 for r in rows for k in ("ood_points", "ood_strain_points", "ood_rate_points",
                                                        "ood_path_points"))
    assert "stayed inside the surrogate's training envelope" in proc.stdout
    for name in ("displacement.bp", "fields.bp", "force_displacement.png"):
        assert (out / name).exists(), name
    load = [float(r["load_factor"]) for r in rows]
    ry = [float(r["reaction_y"]) for r in rows]
    peak, unloaded = ry[load.index(1.0)], ry[19]
    assert abs(load[19]) < 1e-12
    elastic = ry[0] / load[0]
    assert 0.0 < peak < 0.8 * elastic
    assert unloaded < -0.2 * peak


def test_validation_demo_meets_the_reaction_target(tmp_path):
    """``make demo-validate``: the main demo's surrogate against Taylor FE² on a coarse plate, within
    the issue's 3 % largest reaction deviation at the demo's steps and at twice as many, no point
    outside the envelope, and a report."""
    out = tmp_path / "validate"
    run_cli("validate", "demos/validate_small.toml", "--output", str(out), "--quiet", check=True, timeout=900)
    report = json.loads((out / "report.json").read_text())
    assert report["pass"] and report["comparison"]["max_reaction_deviation"] <= 0.03
    # refine = 2: the Taylor reference moves with its step (0.8 % from 96 to 192 steps; 3.3 % at 12),
    # and the surrogate still meets the target with both runs refined
    rf = report["refinement"]
    assert rf["factor"] == 2 and rf["steps"] == 192
    assert 0.002 < rf["reference_step_error"]["max_reaction_deviation"] < 0.02
    assert rf["comparison"]["max_reaction_deviation"] <= 0.03
    assert report["ood"]["monitored"] and report["ood"]["max_ood_points"] == 0
    assert max(report["iterations"]["surrogate"]) <= 8
    assert (out / "report.md").exists() and (out / "force_displacement.png").exists()
