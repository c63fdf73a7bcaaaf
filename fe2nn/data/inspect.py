"""``fe2nn inspect PATH [...]``: counts, ranges, rejections and plots of a dataset; for a
surrogate directory, what the surrogate is (:mod:`fe2nn.surrogate.summary`); for a solve
checkpoint, what it holds and whether it can be resumed (:func:`fe2nn.macro.checkpoint.summarize`); for a
solve's output directory, what was run and a digest of its steps (:func:`fe2nn.macro.run.summarize_results`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from fe2nn.data.dataset import array_checksum, read_arrays, recipe_checksum, rejection_reasons
from fe2nn.io_utils import pyplot, save_figure

COMPONENTS = ("11", "22", "33", "√2·23", "√2·13", "√2·12")


def _ranges(a: np.ndarray) -> List[tuple]:
    flat = a.reshape(-1, a.shape[-1])
    return [(float(np.nanmin(flat[:, k])), float(np.nanmax(flat[:, k]))) for k in range(a.shape[-1])]


def summarize(arrays: Dict[str, np.ndarray], attrs: dict) -> Dict:
    """Counts and per-component ranges (strain [-], stress [Pa], strain rate [1/s], dt [s])."""
    strain, time = arrays["strain"], arrays["time"]
    dt = np.diff(time, axis=1)
    rate = np.diff(strain, axis=1) / dt[..., None]
    names = list(attrs.get("family_names", []))
    fam = {names[c] if c < len(names) else str(c): int((arrays["family"] == c).sum())
           for c in np.unique(arrays["family"])}
    hm = arrays["hill_mandel"][np.isfinite(arrays["hill_mandel"])]
    it = arrays["iterations"][arrays["iterations"] >= 0]
    return {
        "n_samples": int(strain.shape[0]), "n_steps": int(strain.shape[1] - 1), "families": fam,
        "accepted": int(arrays["accepted"].sum()), "rejected": rejection_reasons(arrays),
        "strain": _ranges(strain), "stress": _ranges(arrays["stress"]), "strain_rate": _ranges(rate),
        "dt": (float(dt.min()), float(np.median(dt)), float(dt.max())),
        "hill_mandel_max": float(hm.max()) if hm.size else float("nan"),
        "iterations": (float(it.mean()) if it.size else 0.0, int(it.max()) if it.size else 0),
        "content_hash": array_checksum(arrays), "recipe_hash": recipe_checksum(arrays, attrs),
        "rejected_samples": [int(i) for i in np.nonzero(~arrays["accepted"].astype(bool))[0]],
    }


def report(path: Path, s: Dict, attrs: dict) -> str:
    lines = [f"{path}: {s['n_samples']} samples x {s['n_steps']} increments, content sha256 {s['content_hash'][:16]}"
             + (f", recipe sha256 {s['recipe_hash'][:16]}" if s["recipe_hash"] else "")]
    lines.append("families: " + ", ".join(f"{k} {v}" for k, v in s["families"].items()))
    rej = s["rejected"]
    lines.append(f"accepted: {s['accepted']}; rejected: {rej['not_converged']} not converged, "
                 f"{rej['hill_mandel']} Hill-Mandel residual > {attrs.get('hill_mandel_tol', '?')}")
    if s["rejected_samples"]:
        shown = s["rejected_samples"][:10]
        more = f" ... ({len(s['rejected_samples'])} in all)" if len(s["rejected_samples"]) > 10 else ""
        lines.append("rejected samples: " + ", ".join(map(str, shown)) + more)
    lines.append(f"Hill-Mandel residual max {s['hill_mandel_max']:.3g}; RVE iterations per increment mean "
                 f"{s['iterations'][0]:.2f}, max {s['iterations'][1]}")
    lines.append(f"time step dt [s]: min {s['dt'][0]:.3g}, median {s['dt'][1]:.3g}, max {s['dt'][2]:.3g}")
    lines.append(f"{'component':>10} {'strain min':>11} {'strain max':>11} {'stress min':>11} {'stress max':>11} "
                 f"{'rate min':>10} {'rate max':>10}")
    for k, c in enumerate(COMPONENTS):
        e, sg, r = s["strain"][k], s["stress"][k], s["strain_rate"][k]
        lines.append(f"{c:>10} {e[0]:11.3e} {e[1]:11.3e} {sg[0]:11.3e} {sg[1]:11.3e} {r[0]:10.2e} {r[1]:10.2e}")
    lines.append("units: strain [-], stress [Pa], strain rate [1/s] (Mandel components)")
    for key in ("fe2nn_version", "git_commit", "created"):
        if key in attrs:
            lines.append(f"{key}: {attrs[key]}")
    return "\n".join(lines)


def plot(arrays: Dict[str, np.ndarray], attrs: dict, out_dir: Path, per_family: int = 3) -> List[Path]:
    """PNG plots of sample strain paths and stress responses (a few per family)."""
    plt = pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(attrs.get("family_names", []))
    picks = []
    for c in np.unique(arrays["family"]):
        picks += [(int(c), int(i)) for i in np.nonzero(arrays["family"] == c)[0][:per_family]]
    written = []
    for what, scale, unit in (("strain", 100.0, "strain [%]"), ("stress", 1e-6, "stress [MPa]")):
        n = len(picks)
        cols = min(n, per_family)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.3 * rows), squeeze=False)
        for ax in axes.flat[n:]:
            ax.axis("off")
        for ax, (c, i) in zip(axes.flat, picks):
            t = arrays["time"][i]
            for k in range(6):
                ax.plot(t, scale * arrays[what][i, :, k], lw=0.9, label=COMPONENTS[k])
            status = "" if arrays["accepted"][i] else " (rejected)"
            ax.set_title(f"#{i} {names[c] if c < len(names) else c}{status}", fontsize=8)
            ax.set_ylabel(unit, fontsize=7)
            ax.set_xlabel("time [s]", fontsize=7)
            ax.tick_params(labelsize=6)
        axes.flat[0].legend(fontsize=5, ncol=2)
        fig.tight_layout()
        p = out_dir / f"{what}.png"
        save_figure(fig, p, dpi=90)
        written.append(p)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fe2nn inspect", description="What a file or directory holds: a dataset's "
                                 "counts, ranges, rejections and plots; what a surrogate is (and whether its weights "
                                 "match its card); what a solve checkpoint holds and whether it can be resumed; what "
                                 "a solve's output directory holds and what was run.")
    ap.add_argument("paths", nargs="+", metavar="PATH",
                    help="HDF5 dataset written by fe2nn generate, a surrogate directory (with card.json), a "
                         "solve checkpoint (an output directory with checkpoint/, or that directory), or a solve's "
                         "output directory (with steps.csv and run.json)")
    ap.add_argument("--plots", metavar="DIR", help="datasets: write strain.png and stress.png into DIR")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--table", action="store_true",
                    help="surrogates: one Markdown table row each (architecture, training, errors)")
    args = ap.parse_args(argv)
    from fe2nn.errors import UserError
    from fe2nn.surrogate import summary

    surrogates = [summary.is_surrogate(p) for p in args.paths]
    if args.table and not all(surrogates):
        raise UserError(f"{args.paths[surrogates.index(False)]}: --table lists surrogates (directories with "
                        f"card.json), not datasets")
    if args.plots and (any(surrogates) or len(args.paths) > 1):
        raise UserError("--plots: give one dataset (HDF5 written by fe2nn generate)")
    from fe2nn.macro import checkpoint, run

    results, texts = [], []
    for path, is_surrogate in zip(args.paths, surrogates):
        if checkpoint.is_checkpoint(path) and not args.table and not args.plots:
            s = checkpoint.summarize(path)
            text = checkpoint.report(s)
        elif run.is_results(path) and not args.table and not args.plots:
            s = run.summarize_results(path)
            text = run.results_report(s)
        elif is_surrogate:
            s = summary.summarize(path)
            text = summary.report(s)
        else:
            if Path(path).is_dir():
                raise UserError(f"{path}: a directory without card.json, checkpoint/ or steps.csv; expected an HDF5 "
                                f"dataset written by fe2nn generate, a surrogate directory, a solve checkpoint or a "
                                f"solve's output directory")
            arrays, attrs = read_arrays(Path(path))
            s = summarize(arrays, attrs)
            text = report(Path(path), s, attrs)
        results.append(s)
        texts.append(text)
    if args.table:
        print(summary.table(results))
    elif args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=1))
    else:
        print("\n\n".join(texts))
    if args.plots:
        for p in plot(arrays, attrs, Path(args.plots)):
            print(f"wrote {p}")
    return 0
