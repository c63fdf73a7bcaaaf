"""Does the surrogate gain from a classical model's memory as inputs, or from being made odd?  A study.

    python surrogates/aluminium_taylor/overlay_baseline.py --save /tmp/overlay.pt   # the J2 overlay, 5 min
    python surrogates/aluminium_taylor/inputs_study.py --mode control --out /tmp/control
    python surrogates/aluminium_taylor/inputs_study.py --mode overlay --overlay /tmp/overlay.pt --out /tmp/overlay
    python surrogates/aluminium_taylor/inputs_study.py --mode odd --out /tmp/odd

Trains this directory's model (the default) on for ``--epochs`` epochs (default 90 for control
and overlay, 60 for odd) on the training split of the 7320-path set, at the data's step only,
with the relative L2 stress loss alone, in batches of 256 at lr 1e-3 -> 5e-6 (cosine), float32;
the epoch with the lowest validation error is kept.  ``--mode``:

* ``control``: as it is;
* ``overlay``: F and G also see the state of the fitted J2 overlay (``overlay_baseline.py``)
  along the same path: each of its 12 elements' deviatoric stress over its flow stress (72
  numbers) and its plastic path p_m / 1e-2 (12). The new inputs start with zero weights, so the
  run starts from the default's function;
* ``odd``: the model made odd (``fe2nn.surrogate.rno.symmetrized``: the path and its negative
  side by side, half the difference of their stresses).

Prints and writes (``--out``/report.json) the mean relative L2 stress error at Δt × 1 on the
held-out random and reversal walks and on the monotonic and cyclic paths kept out of training
(larger increments take equal explicit-Euler sub-steps of the card's sub-step length, without
the blend), before (``--mode odd``: as it is and made odd) and after training.  About 10 s per
epoch on one core here (odd: twice that).  Results: "Beyond step 13" in README.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fe2nn.io_utils import write_text_atomic
from fe2nn.mandel import deviator
from fe2nn.surrogate.card import load_surrogate
from fe2nn.surrogate.rno import relative_l2
from fe2nn.surrogate.train import read_dataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from overlay_baseline import GDOT0, SQ23, Overlay  # noqa: E402


@torch.no_grad()
def overlay_inputs(params: str, strain: torch.Tensor, time_: torch.Tensor) -> torch.Tensor:
    """(B, T, 84) along paths (B, T+1, 6): the overlay's element stresses over their flow stresses
    (12 x 6) and plastic paths p_m / 1e-2 (12), after each increment."""
    ov = Overlay(12)
    ov.load_state_dict(torch.load(params))
    mu = 1e3 * torch.exp(ov.log_mu)
    s0, q, b, n = (torch.exp(v) for v in (ov.log_s0, ov.log_q, ov.log_b, ov.log_n))
    B = strain.shape[0]
    eps_p, p, out = strain.new_zeros(B, 12, 6), strain.new_zeros(B, 12), []
    for i in range(1, strain.shape[1]):
        dev = deviator(strain[:, i])[:, None, :]
        dt = (time_[:, i] - time_[:, i - 1]).clamp_min(1e-12)
        s_tr = 2 * mu * (dev - eps_p)
        norm = torch.sqrt((s_tr ** 2).sum(-1) + 1e-20)
        drag = SQ23 * (s0 + q * (1 - torch.exp(-b * p))) * (1.0 / (dt[:, None] * GDOT0)) ** (1 / n)
        dgamma = torch.exp(Overlay._root(norm, mu, drag, n))
        eps_p = eps_p + dgamma[..., None] * s_tr / norm[..., None]
        p = p + SQ23 * dgamma
        flow = SQ23 * (s0 + q * (1 - torch.exp(-b * p)))
        out.append(torch.cat([(2 * mu * (dev - eps_p) / flow[..., None]).reshape(B, -1), p / 1e-2], -1))
    return torch.stack(out, 1)


class Study(nn.Module):
    """The default's RNO (increment form, soft bound) with ``n_in`` more inputs of F and G (zero
    weights) and an ``odd`` switch, as a plain rollout over whole paths."""

    def __init__(self, rno, n_in: int):
        super().__init__()
        self.F, self.G, self.F_linear = (copy.deepcopy(m) for m in (rno.F, rno.G, rno.F_linear))
        self.k, self.bound, self.h = rno.k, rno.arch.xi_bound, rno.max_substep_strain
        self.register_buffer("scales", rno.scales.clone())
        self.n_in, self.odd = n_in, False
        for lin in (self.F[0], self.G[0], self.F_linear):
            w = lin.weight.data
            lin.weight = nn.Parameter(torch.cat([w, w.new_zeros(w.shape[0], n_in)], 1))
            lin.in_features += n_in

    def rollout(self, strain, time_, extra):
        if self.odd:
            both = self._rollout(torch.cat([strain, -strain]), torch.cat([time_, time_]), torch.cat([extra, -extra]))
            return 0.5 * (both[:len(strain)] - both[len(strain):])
        return self._rollout(strain, time_, extra)

    def _rollout(self, strain, time_, extra):
        s = self.scales.to(strain.dtype)
        xi, out = strain.new_zeros(strain.shape[0], self.k), []
        for n in range(1, strain.shape[1]):
            dt = (time_[:, n] - time_[:, n - 1])[:, None]
            inc = strain[:, n] - strain[:, n - 1]
            q = inc / (dt * s[1])
            r = torch.asinh(q)
            more = [extra[:, n - 1]] if self.n_in else []
            m = torch.clamp(torch.ceil(torch.linalg.vector_norm(inc, dim=-1) / self.h), min=1)
            for j in range(1, int(m.max()) + 1):  # equal explicit-Euler sub-steps of a large increment
                e = (strain[:, n - 1] + torch.clamp(j / m, max=1.0)[:, None] * inc) / s[0]
                o = self.G(torch.cat([e, r, self.bound * torch.tanh(xi / self.bound), *more], -1))
                g = o[:, :self.k] + (o[:, self.k:].unflatten(-1, (self.k, 6)) @ q[..., None])[..., 0]
                xi = xi + (m >= j).to(xi.dtype)[:, None] * (dt / m[:, None]) * (s[1] / s[0]) * g
            x = torch.cat([strain[:, n] / s[0], r, self.bound * torch.tanh(xi / self.bound), *more], -1)
            out.append((self.F(x) + self.F_linear(x)) * s[2])
        return torch.stack(out, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["control", "overlay", "odd"], required=True)
    ap.add_argument("--overlay", default=None, help="the overlay's parameters (overlay_baseline.py --save)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.mode == "overlay" and not a.overlay:
        sys.exit("inputs_study: --mode overlay needs --overlay FILE (overlay_baseline.py --save FILE)")
    epochs = a.epochs if a.epochs is not None else (60 if a.mode == "odd" else 90)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ds = read_dataset(str(HERE / "data" / "al_taylor_7320.h5"))
    rno, card = load_surrogate(str(HERE))
    split = card["dataset"]["split"]
    strain, time_, stress = (torch.as_tensor(ds[k]) for k in ("strain", "time", "stress"))
    extra = (overlay_inputs(a.overlay, strain, time_) if a.mode == "overlay"
             else strain.new_zeros(strain.shape[0], strain.shape[1] - 1, 0))
    model = Study(rno, extra.shape[-1])
    fam, test = ds["family"], np.array(sorted(split["test"]))
    groups = {"random_walk": test[fam[test] == 0], "reversal_walk": test[fam[test] == 3],
              "monotonic": np.flatnonzero(fam == 1), "cyclic": np.flatnonzero(fam == 2)}

    def errors(m, idx, dtype=torch.float64) -> np.ndarray:
        with torch.no_grad():
            m = copy.deepcopy(m).to(dtype)
            pred = m.rollout(strain[idx].to(dtype), time_[idx].to(dtype), extra[idx].to(dtype))
            return relative_l2(pred, stress[idx, 1:].to(dtype)).double().numpy()

    def table(m) -> dict:
        return {g: float(errors(m, idx).mean()) for g, idx in groups.items()}

    report = {"mode": a.mode, "epochs": epochs, "before": table(model)}
    if a.mode == "odd":
        model.odd = True
        report["made_odd"] = table(model)
    print(json.dumps({k: v for k, v in report.items() if k != "mode"}), flush=True)
    train, val = np.array(split["train"]), np.array(split["val"])
    m32 = model.to(torch.float32)
    S, T, X, Y = (v.to(torch.float32) for v in (strain, time_, extra, stress))
    opt = torch.optim.Adam(m32.parameters(), lr=1e-3)
    n_batches = len(train) // 256
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * n_batches, eta_min=5e-6)
    rng, t0 = np.random.default_rng(1), time.time()
    best, report["history"] = (np.inf, None), []
    for epoch in range(epochs):
        perm, loss_sum = rng.permutation(train), 0.0
        for j in range(n_batches):
            idx = perm[j * 256:(j + 1) * 256]
            loss = relative_l2(m32.rollout(S[idx], T[idx], X[idx]), Y[idx, 1:]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
        v = float(errors(m32, val, torch.float32).mean())
        report["history"].append({"train": loss_sum / n_batches, "val": v})
        if v < best[0]:
            best = (v, copy.deepcopy(m32.state_dict()))
        print(f"{a.mode} epoch {epoch + 1}: training {100 * loss_sum / n_batches:.3f} %, validation {100 * v:.3f} % "
              f"({time.time() - t0:.0f} s)", flush=True)
    if best[1] is not None:
        m32.load_state_dict(best[1])
    report["after"] = table(m32)
    print(json.dumps(report["after"]), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
