#!/usr/bin/env python3
"""Checks that scripts/jax_bench.py's cells are PyTorch's, so that `--peer jax` times the same
model as `--peer torch` and the engine:

    python3 scripts/check_jax_cells.py      (needs `pip install torch jax`)

For each cell (and an LSTM with projections, `proj_size`), the same weights in `nn.RNN` /
`nn.LSTM` / `nn.GRU` and in jax_bench.py's
recurrence (`hidden_states`: input projection of all steps, then `lax.scan`), in float64:
the hidden states of every step and the gradients of a loss on them with respect to every
weight must agree to 1e-10. Exits non-zero, naming the cell and tensor, when they do not.
"""
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jax_bench import GATES, hidden_states  # noqa: E402

T, B, I, H, P = 5, 3, 4, 7, 3  # H odd, nothing a multiple of a vector width; P: proj_size
TOLERANCE = 1e-10
NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def names(proj):
    return NAMES + (("weight_hr_l0",) if proj else ())


def torch_run(cell, x, probe, proj):
    """Torch's states `[T, B, H]` (`[T, B, P]` projected) and the gradients of
    `sum(states * probe)`, by name."""
    torch.manual_seed(0)
    extra = {"proj_size": proj} if proj else {}
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H, **extra)
    module = module.double()
    hs, _ = module(torch.from_numpy(x))
    (hs * torch.from_numpy(probe)).sum().backward()
    weights = {n: getattr(module, n).detach().numpy() for n in names(proj)}
    grads = {n: getattr(module, n).grad.numpy() for n in names(proj)}
    return hs.detach().numpy(), weights, grads


def jax_run(cell, x, probe, weights):
    """jax_bench.py's states and gradients for the same weights."""
    def states(w):
        # NAMES in its order; the projection, if any, last.
        return hidden_states(cell, x, *(w[n] for n in NAMES), jax, w.get("weight_hr_l0"))

    w = {n: jnp.asarray(v) for n, v in weights.items()}
    grads = jax.grad(lambda w: jnp.sum(states(w) * probe))(w)
    return np.asarray(states(w)), {n: np.asarray(g) for n, g in grads.items()}


def main():
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (T, B, I))
    failed = []
    for cell, proj in [(cell, 0) for cell in GATES] + [("lstm", P)]:
        probe = rng.uniform(-1, 1, (T, B, proj or H))
        hs, weights, grads = torch_run(cell, x, probe, proj)
        jhs, jgrads = jax_run(cell, x, probe, weights)
        label = f"{cell}p" if proj else cell
        for what, a, b in [("states", hs, jhs)] + [(n, grads[n], jgrads[n]) for n in names(proj)]:
            err = float(np.max(np.abs(a - b)))
            print(f"{label:5} {what:13} max |torch - jax| = {err:.1e}")
            if not err <= TOLERANCE:
                failed.append(f"{label} {what}: {err:.1e}")
    if failed:
        sys.exit("jax_bench.py's cells differ from torch's: " + "; ".join(failed))
    print(f"all cells agree to {TOLERANCE:g}")


if __name__ == "__main__":
    main()
