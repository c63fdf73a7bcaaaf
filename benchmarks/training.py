"""Training throughput of the RNO: seconds per epoch and paths per second, CPU against CUDA.

    python benchmarks/training.py [--device cpu|cuda] [--batch-sizes 16,256] [--paths 1024]
                                  [--recipe default|odd] [--out results/training.json] [--quick]

One ``Trainer.train_epoch`` (forward, backward and optimizer step over every training path, at
a step-size factor drawn per batch from {1/2, 1, 2, 4}, as ``fe2nn train`` does) of a model with
the shipped default's architecture (k = 16, F and G 128 x 128, increment form, float32), trained
from scratch (no sub-steps) on synthetic J2 random walks of 120 increments.  Validation is not
timed.  Each case: one warm-up epoch (on a CUDA device it records the CUDA graphs), then the best
of ``--repeat`` epochs.  On a CUDA device each batch size runs with CUDA graphs
(``training.cuda_graphs``, the default) and without, eagerly.

``--recipe odd`` times the shipped most accurate model's recipe instead
(``surrogates/aluminium_taylor_odd_65k``): the odd model (twice the evaluations per step), sub-steps
of at most the largest increment at the data's step size (so Δt x 2 and x 4 batches sub-step), the
increment term (weight 3) and the rate-stability term (weight 50, margin 2e-3).  Its batches always
run eagerly (``Trainer.eager_reason``).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


#: what ``--recipe odd`` adds to the default's [model] and [training] tables
ODD_RECIPE = {"model": {"odd": True},
              "training": {"increment_weight": 3.0, "rate_stability_weight": 50.0, "rate_stability_margin": 2e-3}}


def _trainer(tmp: Path, data: Path, batch: int, device: str, graphs: bool, threads: int, recipe: str = "default"):
    import numpy as np

    from fe2nn.config import parse
    from fe2nn.surrogate import train as tr

    table = {"data": {"path": str(data), "split": [1.0, 0.0, 0.0]},
             "model": {"k": 16, "f_hidden": [128, 128], "g_hidden": [128, 128], "g_increment": True,
                       "xi_bound": 5.0},
             "training": {"epochs": 100, "batch_size": batch, "lr": 1e-3, "dt_factors": [0.5, 1, 2, 4],
                          "dtype": "float32", "device": device, "threads": threads, "cuda_graphs": graphs},
             "output": {"dir": str(tmp / "out")}}
    if recipe == "odd":
        for key, extra in ODD_RECIPE.items():
            table[key].update(extra)
    c = parse(tr.TrainConfig, table, "benchmarks/training.py")
    ds = tr.combine_datasets([tr.read_dataset(c.data.path)], ["random_walk"], "benchmarks/training.py")
    split = tr.split_parts(ds, ["random_walk"], c.data.split, 0, 0, "benchmarks/training.py")
    trainer = tr.Trainer(c, ds, split, tmp / "out", torch.device(device), progress=False)
    if recipe == "odd":  # sub-steps as the shipped odd model trains with them (fine-tuned from a sub-stepped one)
        trainer.model.max_substep_strain = float(np.linalg.norm(np.diff(ds["strain"], axis=1), axis=-1).max())
    return trainer


def _time_epochs(trainer, repeat: int) -> float:
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    trainer.train_epoch()  # warm-up (and graph recording)
    best = float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        trainer.train_epoch()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch-sizes", default="16,256", help="comma-separated paths per batch")
    ap.add_argument("--paths", type=int, default=1024, help="training paths (random walks, 120 increments)")
    ap.add_argument("--repeat", type=int, default=2, help="timed epochs per case (best is reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="64 paths of 24 increments, batch size 16 (smoke run)")
    ap.add_argument("--recipe", default="default", choices=["default", "odd"],
                    help="the shipped default's training (default) or the odd model's (sub-steps, rate-stability term)")
    ap.add_argument("--out", help="JSON file")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO / "tests"))
    from test_rno_synth import make_dataset

    batches = [16] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    n, T = (64, 24) if args.quick else (args.paths, 120)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "walks.h5", {"random_walk": n}, T=T, seed=1)
        for b in batches:
            for graphs in ([True, False] if args.device == "cuda" and args.recipe == "default" else [False]):
                trainer = _trainer(tmp, data, b, args.device, graphs, args.threads, args.recipe)
                assert trainer.uses_cuda_graphs() == graphs
                s = _time_epochs(trainer, 1 if args.quick else args.repeat)
                rows.append({"device": args.device, "recipe": args.recipe, "batch_size": b, "cuda_graphs": graphs,
                             "paths": n, "increments": T, "epoch_s": s, "paths_per_s": n / s})
    print(f"{'device':<7}{'recipe':<8}{'batch':>6}{'graphs':>8}{'paths':>7}{'epoch [s]':>11}{'paths/s':>10}")
    for r in rows:
        print(f"{r['device']:<7}{r['recipe']:<8}{r['batch_size']:>6}{('yes' if r['cuda_graphs'] else 'no'):>8}{r['paths']:>7}"
              f"{r['epoch_s']:>11.3f}{r['paths_per_s']:>10.1f}")
    if args.out:
        meta = {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                "cpu": platform.processor() or platform.machine(),
                "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp_out = Path(args.out).with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        tmp_out.replace(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
