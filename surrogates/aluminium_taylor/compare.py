"""Compare RNO surrogates on the same unseen paths (fair before/after table).

    python surrogates/aluminium_taylor/compare.py DATASET SURROGATE [SURROGATE ...]
        [--seen DATASET ...] [--out FILE.json]

Groups (accepted samples of DATASET):

* ``random_walk``: the held-out test split of the first surrogate whose card was trained
  on DATASET (same sha256, or the same recipe sha256: regenerated from the same config, see
  ``fe2nn.data.dataset.recipe_checksum``), minus every path that is identical to a training or
  validation path of *any* compared surrogate.  The training/validation paths of a
  surrogate trained on another dataset are read from that dataset, which must be given
  with ``--seen`` (datasets generated with the same seed share their first paths; give
  datasets generated on the same machine, as paths are compared bit for bit);
* every family outside the cards' ``train_families``: all samples.

Each group at dt x 1/4, x 1, x 4 (see ``fe2nn evaluate``); relative L2 stress error per
path over the whole trajectory, mean / p95 / max.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fe2nn.io_utils import write_text_atomic
from fe2nn.surrogate.card import load_surrogate
from fe2nn.surrogate.evaluate import FACTORS, dataset_match, path_errors, predict
from fe2nn.surrogate.train import read_dataset


def _seen_paths(card: dict, datasets: list) -> np.ndarray:
    """Strain paths (n, T+1, 6) of a surrogate's training + validation split."""
    info = card["dataset"]
    ds = next((d for d in datasets if dataset_match(info, d) != "none"), None)
    if ds is None:
        sys.exit(f"compare: the dataset of a surrogate (sha256 {info['sha256'][:12]}...) is needed: pass it with --seen")
    idx = list(info["split"]["train"]) + list(info["split"]["val"])
    return ds["strain"][idx]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("surrogates", nargs="+")
    ap.add_argument("--seen", nargs="*", default=[], help="datasets the surrogates were trained on")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    ds = read_dataset(a.dataset)
    datasets = [ds, *(read_dataset(p) for p in a.seen)]
    models = [(s, *load_surrogate(s)) for s in a.surrogates]
    own = [c for _, _, c in models if dataset_match(c["dataset"], ds) != "none"]
    if not own:
        sys.exit("compare: no surrogate was trained on DATASET (its test split defines the random-walk group)")
    train_fams = set(own[0]["dataset"]["train_families"])
    test = np.array(sorted(own[0]["dataset"]["split"]["test"]), dtype=np.int64)
    seen = np.concatenate([_seen_paths(c, datasets) for _, _, c in models])
    flat = seen.reshape(len(seen), -1)
    keep = [i for i in test if np.min(np.abs(flat - ds["strain"][i].reshape(1, -1)).max(axis=1)) > 0.0]
    groups = {"random_walk (unseen test paths)": np.array(keep, dtype=np.int64)}
    for code, name in enumerate(ds["family_names"]):
        idx = np.flatnonzero(ds["accepted"] & (ds["family"] == code))
        if name not in train_fams and idx.size:  # files list every family, also those without samples
            groups[f"{name} (kept out)"] = idx
    report = {"dataset": a.dataset, "sha256": ds["sha256"], "groups": {}}
    print(f"{'surrogate':40s} {'group':34s} {'n':>4s} " + " ".join(f"{'x%g mean' % f:>10s}" for f in FACTORS)
          + f" {'x1 p95':>8s} {'x1 max':>8s}")
    for name, idx in groups.items():
        report["groups"][name] = {"n": int(idx.size), "indices": idx.tolist(), "surrogates": {}}
        for path, model, _ in models:
            res = {}
            for f in FACTORS:
                pred, ti = predict(model, ds["strain"][idx], ds["time"][idx], f)
                e = path_errors(pred, ds["stress"][idx][:, 1:][:, ti])
                res[f"dt_x{f:g}"] = {"mean": float(e.mean()), "p95": float(np.percentile(e, 95)), "max": float(e.max())}
            report["groups"][name]["surrogates"][path] = res
            print(f"{path[-40:]:40s} {name:34s} {idx.size:4d} "
                  + " ".join(f"{100 * res[f'dt_x{f:g}']['mean']:9.2f}%" for f in FACTORS)
                  + f" {100 * res['dt_x1']['p95']:7.2f}% {100 * res['dt_x1']['max']:7.2f}%")
    if a.out:
        write_text_atomic(Path(a.out), json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
