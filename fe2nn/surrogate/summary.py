"""What a trained surrogate is, from its directory: ``fe2nn inspect SURROGATE [...]``.

Reads the card (architecture, normalization, training envelope, dataset, training run, errors on
the training dataset's splits), checks the weights against it by loading them (the same checks as
:func:`fe2nn.surrogate.card.load_surrogate`: sha256, tensor names and shapes), and adds the path
errors of ``evaluation/report.json`` when ``fe2nn evaluate`` wrote one there.  Errors are relative
L2 stress errors per path over the whole trajectory, in percent in the text and as fractions in JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from fe2nn.errors import UserError
from fe2nn.surrogate.card import card_paths, load_surrogate

#: the evaluation's step-size factors, in the order of the tables
DT_KEYS = ("dt x 1/4", "dt x 1", "dt x 4")
#: the card's names of the same factors
CARD_DT = ("dt_x0.25", "dt_x1", "dt_x4")


def is_surrogate(path: str | Path) -> bool:
    """A surrogate directory (with card.json) or a card file."""
    p = Path(path)
    return (p / "card.json").is_file() if p.is_dir() else p.suffix == ".json"


def summarize(path: str | Path) -> Dict[str, Any]:
    """JSON-able summary of the surrogate at ``path`` (a directory or its card.json); UserError
    (one line, naming the file) when it cannot be loaded."""
    directory, _ = card_paths(path)
    model, card = load_surrogate(directory)
    arch, env, training = model.arch, card.get("envelope", {}), card.get("training", {})  # arch: the card's, checked
    cfg = training.get("config", {}).get("training", {})
    dataset = card.get("dataset", {})
    out: Dict[str, Any] = {
        "surrogate": str(directory),
        "k": arch.k, "f_layers": arch.f_sizes(), "g_layers": arch.g_sizes(),
        "f_blocks": arch.f_blocks, "g_blocks": arch.g_blocks, "activation": arch.activation,
        "g_increment": arch.g_increment, "xi_bound": arch.xi_bound, "odd": arch.odd, "g_trial": arch.g_trial,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "weights_sha256": card["weights_sha256"],
        "normalization": card.get("normalization", {}),
        "max_substep_strain": float(card.get("integration", {}).get("max_substep_strain", 0.0)),
        "envelope": {k: env[k] for k in ("equivalent_strain_max", "strain_rate_norm_min_nonzero",
                                          "strain_rate_norm_max", "strain_path_length_max") if k in env},
        "dataset": {"files": [Path(dataset.get("path", "?")).name]
                    + [Path(e.get("path", "?")).name for e in dataset.get("extra", [])],
                    "sha256": dataset.get("sha256"), "train_families": dataset.get("train_families", [])},
        "training": {"epochs_run": training.get("epochs_run"), "best_epoch": training.get("best_epoch"),
                     "init_from": cfg.get("init_from") or None, "lr": cfg.get("lr"),
                     "batch_size": cfg.get("batch_size")},
        "errors": {split: {dt: card.get("errors", {}).get(f"{split}_{key}") for dt, key in zip(DT_KEYS, CARD_DT)}
                   for split in ("train", "val", "test")},
    }
    report = directory / "evaluation" / "report.json"
    if report.is_file():
        try:
            ev = json.loads(report.read_text())
            out["evaluation"] = {
                "report": str(report), "dataset": Path(ev["dataset"]).name,
                "groups": {name: {"kind": g.get("kind"), "n_paths": g.get("n_paths"),
                                  "errors": {dt: g["errors"].get(dt) for dt in DT_KEYS}}
                           for name, g in ev["groups"].items()},
                "targets": ev.get("targets", {}),
                # reports record the weights they evaluated (older ones do not: None)
                "stale": ev.get("weights_sha256") not in (None, card["weights_sha256"]),
            }
            if "uniaxial" in ev:
                out["evaluation"]["uniaxial_max_deviation"] = ev["uniaxial"].get("max_deviation")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{report}: unreadable evaluation report ({type(err).__name__}: {err})") from None
    return out


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def _net(s: Dict[str, Any], side: str, sep: str = "-", hidden_only: bool = False) -> str:
    """F's or G's layer sizes ("28-128-128-6"), with its residual blocks ("+ 1 residual block")."""
    sizes = s[side + "_layers"][1:-1] if hidden_only else s[side + "_layers"]
    nb = s.get(side + "_blocks", 0)
    return sep.join(map(str, sizes)) + (f" + {nb} residual block{'s' if nb > 1 else ''}" if nb else "")


def report(s: Dict[str, Any]) -> str:
    """The summary as text (errors in percent)."""
    n, env, tr, ds = s["normalization"], s["envelope"], s["training"], s["dataset"]
    lines = [f"{s['surrogate']}: recurrent neural operator, k = {s['k']} internal variables, "
             f"F {_net(s, 'f')}, G {_net(s, 'g')} ({s['activation']}"
             + (", increment form" if s["g_increment"] else "")
             + (", G sees the trial stress" if s.get("g_trial") else "")
             + (f", xi bound {s['xi_bound']:g}" if s["xi_bound"] else "")
             + (", odd: the path and its negative side by side, state 2k" if s.get("odd") else "")
             + f"), {s['parameters']:,} parameters; weights match the card (sha256 {s['weights_sha256'][:16]})"]
    if n:
        lines.append(f"normalization: strain {n['strain_scale']:.3g}, strain rate {n['rate_scale']:.3g} 1/s, "
                     f"stress {n['stress_scale'] / 1e6:.4g} MPa, time {n['time_scale']:.3g} s"
                     + (f"; xi sub-stepped above a strain increment of {s['max_substep_strain']:.3g}"
                        if s["max_substep_strain"] else ""))
    names = {"equivalent_strain_max": ("equivalent strain <= {:.3g} %", 100),
             "strain_rate_norm_min_nonzero": ("strain-rate norm >= {:.3g} 1/s", 1),
             "strain_rate_norm_max": ("strain-rate norm <= {:.3g} 1/s", 1),
             "strain_path_length_max": ("path length <= {:.3g} %", 100)}
    if env:
        lines.append("training envelope: " + ", ".join(names[k][0].format(names[k][1] * v) for k, v in env.items())
                     + " (per component: card.json)")
    else:
        lines.append("training envelope: none in the card (in a solve, the out-of-distribution monitor is off)")
    if tr["epochs_run"] is not None:
        lines.append(f"trained on: {' + '.join(ds['files'])} (sha256 {str(ds['sha256'])[:16]}), families "
                     f"{', '.join(ds['train_families'])}; {tr['epochs_run']} epochs, best {tr['best_epoch']}"
                     + (f", batches of {tr['batch_size']}, lr {tr['lr']:g}" if tr["lr"] else "")
                     + (f", continued from {tr['init_from']}" if tr["init_from"] else ""))
    else:
        lines.append("trained on: not recorded in the card")
    if any(e is not None for row in s["errors"].values() for e in row.values()):
        lines.append("errors on the training dataset's splits (relative L2 of the stress per path, mean / p95 / max):")
        lines.append(f"  {'split':<8}" + "".join(f"{dt:>26}" for dt in DT_KEYS))
        for split, row in s["errors"].items():
            cells = [("–" if e is None else f"{100 * e['mean']:.2f} / {100 * e['p95']:.2f} / {100 * e['max']:.1f} %")
                     for e in row.values()]
            lines.append(f"  {split:<8}" + "".join(f"{c:>26}" for c in cells))
    else:
        lines.append("errors: not recorded in the card")
    ev = s.get("evaluation")
    if ev:
        if ev.get("stale"):
            lines.append("evaluation: WARNING the report below is of other weights (retrained since): "
                         "rerun fe2nn evaluate")
        lines.append(f"evaluation ({ev['report']}, on {ev['dataset']}), mean at dt x 1/4 / x 1 / x 4:")
        for name, g in ev["groups"].items():
            means = " / ".join(_pct(None if g["errors"][dt] is None else g["errors"][dt]["mean"]) for dt in DT_KEYS)
            lines.append(f"  {name:<14} {g['n_paths']:>5} paths ({g['kind']}): {means}")
        if ev.get("uniaxial_max_deviation") is not None:
            lines.append(f"  uniaxial loops: largest stress deviation {_pct(ev['uniaxial_max_deviation'])}")
        missed = [t for t, ok in ev["targets"].items() if not ok]
        lines.append(f"  targets: {len(ev['targets']) - len(missed)} of {len(ev['targets'])} met"
                     + (f"; missed: {'; '.join(missed)}" if missed else ""))
    else:
        lines.append("evaluation: none in evaluation/ (fe2nn evaluate SURROGATE DATASET writes one)")
    return "\n".join(lines)


def table(summaries: List[Dict[str, Any]]) -> str:
    """One Markdown row per surrogate: architecture, size, training and errors (test split of its
    own dataset; held-out random walks and cyclic paths of its evaluation report, when there is one)."""
    head = ("| surrogate | k | F / G hidden | parameters | epochs (best) | continued from | test split, dt x 1 "
            "| evaluation: random walks / cyclic, dt x 1 |")
    rows = [head, "|" + "---|" * 8]
    for s in summaries:
        test = s["errors"]["test"]["dt x 1"]
        ev = s.get("evaluation", {}).get("groups", {})

        def mean(name):
            e = ev.get(name, {}).get("errors", {}).get("dt x 1")
            return None if e is None else e["mean"]

        hidden = f"{_net(s, 'f', '×', True)} / {_net(s, 'g', '×', True)}"
        init = s["training"]["init_from"]
        evaluation = f"{_pct(mean('random_walk'))} / {_pct(mean('cyclic'))}" if ev else "–"
        rows.append(f"| `{Path(s['surrogate']).name}` | {s['k']}{' (odd)' if s.get('odd') else ''} | {hidden} | {s['parameters']:,} "
                    f"| {s['training']['epochs_run']} ({s['training']['best_epoch']}) "
                    f"| {'`' + Path(init).name + '`' if init else '–'} | {_pct(None if test is None else test['mean'])} "
                    f"| {evaluation} |")
    return "\n".join(rows)
