"""Does training the tangent bring the surrogate's FE² answer closer to the RVE's?  A study.

    python surrogates/aluminium_taylor/tangent_study.py --weight 1.0 --out /tmp/tangent
    python surrogates/aluminium_taylor/tangent_study.py --weight 0.0 --out /tmp/control

Trains this directory's model (the default, step 13) on for ``--epochs`` epochs with its own data,
split, loss and rate-stability term (card ``training.config``), in batches of 256 at lr 3e-4 -> 5e-6
(cosine), plus ``--weight`` times a tangent (Sobolev) term: the mean relative Frobenius error
||C - C_RVE||_F / ||C_RVE||_F of the model's consistent tangent d sigma_n / d eps_n (autograd,
from its own internal variables) against the Taylor RVE's, at every increment of 32 paths per
batch drawn from ``--paths`` training paths.  The RVE's tangents are computed once, before
training (the dataset's RVE, rebuilt from its stored config; about 2 min for 1024 paths here).
``--coarsen K`` takes those paths at every K-th point (K times longer steps, as FE² steps are;
the RVE's and the model's states then follow the coarse path).  ``--weight 0`` is the control.
The model is exported to ``--out`` like ``fe2nn train`` does; score it with
``fe2nn evaluate OUT data/al_taylor_7320.h5 --uniaxial --rve-probe 64`` and with
``demos/validate_small.toml`` with the model swapped in ("Beyond step 13" in README.md).
About 15 min (weight 1) and 9 min (control) with 2 threads here.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from fe2nn.config import parse
from fe2nn.surrogate import evaluate as ev
from fe2nn.surrogate import train as tr
from fe2nn.surrogate import uniaxial as U

HERE = Path(__file__).resolve().parent
#: training paths drawn per batch for the tangent term
TANGENT_PATHS_PER_BATCH = 32


def model_tangent(model, strain: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """Consistent tangents (B*T, 6, 6) along paths (B, T+1, 6), differentiable in the weights: the
    internal variables come from the model's own rollout (no gradient through them), the tangent of
    each step by autograd (rows d sigma_i / d eps; ``RNO.step_with_tangent`` updates in place and
    cannot be backpropagated)."""
    e0, e1, dt, xi_prev = ev.path_increments(model, strain, time, strain.dtype)
    eps = e1.clone().requires_grad_(True)
    sigma = model.step(eps, e0, dt, xi_prev)[0]
    return torch.stack([torch.autograd.grad(sigma[:, i].sum(), eps, create_graph=True)[0] for i in range(6)], 1)


class TangentTrainer(tr.Trainer):
    """:class:`fe2nn.surrogate.train.Trainer` with the tangent term added to each batch's loss."""

    def __init__(self, *args, weight: float, strain, time, tangent, seed: int, **kw):
        super().__init__(*args, **kw)
        self.weight, self.t_strain, self.t_time, self.t_tangent = weight, strain, time, tangent
        self.t_gen = torch.Generator().manual_seed(seed)

    def _batch_loss(self, s, sig, t, f):
        loss = super()._batch_loss(s, sig, t, f)
        if self.weight <= 0:
            return loss
        j = torch.randint(self.t_strain.shape[0], (TANGENT_PATHS_PER_BATCH,), generator=self.t_gen)
        C = model_tangent(self.model, self.t_strain[j], self.t_time[j])
        C_ref = self.t_tangent[j].reshape(-1, 6, 6)
        return loss + self.weight * (torch.linalg.matrix_norm(C - C_ref) / torch.linalg.matrix_norm(C_ref)).mean()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weight", type=float, default=1.0, help="weight of the tangent term (0: control)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--paths", type=int, default=1024, help="training paths with RVE tangents")
    ap.add_argument("--coarsen", type=int, default=1, help="tangent paths at every K-th point (K x the step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="output surrogate directory")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    card = json.loads((HERE / "card.json").read_text())
    d = copy.deepcopy(card["training"]["config"])
    d["data"]["path"] = str(HERE / "data" / Path(d["data"]["path"]).name)
    d["data"]["extra_paths"] = [str(HERE / "data" / Path(p).name) for p in d["data"]["extra_paths"]]
    d["output"]["dir"] = args.out
    d["training"].update(init_from=str(HERE), epochs=args.epochs, batch_size=256, lr=3e-4, lr_min=5e-6,
                         seed=19, threads=args.threads, device="cpu", time_limit=0.0)
    cfg = parse(tr.TrainConfig, d, "tangent_study")
    fams = list(cfg.data.train_families)
    parts = [tr.read_dataset(p) for p in [cfg.data.path, *cfg.data.extra_paths]]
    ds = tr.combine_datasets(parts, fams, "tangent_study")
    split = tr.split_parts(ds, fams, cfg.data.split, cfg.data.seed, cfg.data.max_samples, "tangent_study")
    idx = np.sort(np.random.default_rng(123).choice(np.array(split["train"]), args.paths, replace=False))
    strain, t_path = ds["strain"][idx][:, ::args.coarsen], ds["time"][idx][:, ::args.coarsen]
    t0 = time.time()
    rve = U.reference_material(parts[0])
    C_rve = torch.cat([ev.probe_material(rve, strain[i:i + 128], t_path[i:i + 128], fractions=())[1]
                       for i in range(0, idx.size, 128)]).float()
    print(f"RVE tangents along {idx.size} training paths (step x {args.coarsen}): {time.time() - t0:.0f} s",
          flush=True)
    out = Path(args.out)
    trainer = TangentTrainer(cfg, ds, split, out, torch.device("cpu"), True, weight=args.weight,
                             strain=torch.as_tensor(strain, dtype=torch.float32),
                             time=torch.as_tensor(t_path, dtype=torch.float32), tangent=C_rve, seed=7)
    out.mkdir(parents=True, exist_ok=True)
    trainer.run(None)
    errors = tr.export(trainer, out)
    print(f"best validation {trainer.best_val_rel_l2():.4%} at epoch {trainer.best_epoch}; "
          f"test {errors['test_dt_x1']['mean']:.4%}; surrogate written to {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
