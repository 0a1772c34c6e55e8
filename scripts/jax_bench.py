#!/usr/bin/env python3
"""The reference training step in JAX, for `cargo xtask bench --peer jax`.

    python3 scripts/jax_bench.py WORKLOAD [THREADS] [CELL]   -> one JSON line with tokens_per_s

The same step as bench-suite and scripts/torch_bench.py, written the way JAX runs it fastest:
one jitted function holding the input projection of all steps as one product, the recurrence
as `lax.scan`, a Linear head at every step, MSE or cross-entropy (mean), the backward pass by
autodiff, clipping to global norm 1.0 (as `clip_grad_norm_`) and an SGD update (lr 1e-3).
Equations and parameter shapes are PyTorch's (`nn.RNN` tanh, `nn.LSTM` gates i, f, g, o,
`nn.GRU` gates r, z, n). THREADS limits the process to that many cores (one also turns off
XLA's multi-threaded Eigen). Workload shapes: scripts/workloads.py. scripts/check_jax_cells.py
checks the cells against torch's.
"""
import json
import os
import sys

from workloads import PROJECTIONS, WORKLOADS, median_step_seconds

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def limit_threads(threads):
    """Must run before jax is imported: XLA reads its flags once."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (
            flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()


def cell_step(cell, jnp, jax):
    """`(state, zx_t) -> (state, h_t)` for the cell, with `zx_t = x_t W_ihᵀ + b_ih` precomputed."""
    def rnn(w_hh, b_hh):
        def f(h, zx):
            h = jnp.tanh(zx + h @ w_hh.T + b_hh)
            return h, h
        return f

    def lstm(w_hh, b_hh, w_hr=None):
        def f(state, zx):
            h, c = state
            i, fg, g, o = jnp.split(zx + h @ w_hh.T + b_hh, 4, axis=-1)
            c = jax.nn.sigmoid(fg) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            if w_hr is not None:  # proj_size: h_t = W_hr (o * tanh(c_t))
                h = h @ w_hr.T
            return (h, c), h
        return f

    def gru(w_hh, b_hh):
        def f(h, zx):
            xr, xz, xn = jnp.split(zx, 3, axis=-1)
            hr, hz, hn = jnp.split(h @ w_hh.T + b_hh, 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            return h, h
        return f

    return {"rnn": rnn, "lstm": lstm, "gru": gru}[cell]


def hidden_states(cell, x, w_ih, w_hh, b_ih, b_hh, jax, w_hr=None):
    """The states of every step `[T, B, H]` (`[T, B, P]` with an LSTM's projection `w_hr`)
    from zero initial states: the input projection of all steps as one product, then
    `lax.scan` over `cell_step`. `jax` is the module, imported by the caller (after
    `limit_threads`)."""
    jnp = jax.numpy
    zx = x @ w_ih.T + b_ih  # all steps' input projection at once
    zeros = jnp.zeros((x.shape[1], w_hh.shape[1]), x.dtype)
    if cell == "lstm":
        state0 = (zeros, jnp.zeros((x.shape[1], w_hh.shape[0] // 4), x.dtype))
        step = cell_step(cell, jnp, jax)(w_hh, b_hh, w_hr)
    else:
        state0, step = zeros, cell_step(cell, jnp, jax)(w_hh, b_hh)
    _, hs = jax.lax.scan(step, state0, zx)
    return hs


def main():
    name = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    cell = sys.argv[3] if len(sys.argv) > 3 else "rnn"
    limit_threads(threads)

    import jax
    import jax.numpy as jnp

    T, B, I, H, O, loss = WORKLOADS[name]
    G = GATES[cell]
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    bound = 1.0 / H ** 0.5
    uniform = lambda k, shape: jax.random.uniform(k, shape, jnp.float32, -bound, bound)
    S = PROJECTIONS.get(name, H)  # the state's width: proj_size, or H
    params = {
        "w_ih": uniform(keys[0], (G * H, I)), "w_hh": uniform(keys[1], (G * H, S)),
        "b_ih": uniform(keys[2], (G * H,)), "b_hh": uniform(keys[3], (G * H,)),
        "w_hy": uniform(keys[4], (O, S)), "b_y": uniform(keys[5], (O,)),
    }
    if name in PROJECTIONS:
        params["w_hr"] = uniform(jax.random.PRNGKey(1), (S, H))
    x = jax.random.normal(keys[6], (T, B, I), jnp.float32)
    if loss == "mse":
        target = jax.random.normal(keys[7], (T, B, O), jnp.float32)
    else:
        target = jax.random.randint(keys[7], (T * B,), 0, O)

    def objective(p):
        hs = hidden_states(cell, x, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], jax, p.get("w_hr"))
        y = hs @ p["w_hy"].T + p["b_y"]
        if loss == "mse":
            return jnp.mean((y - target) ** 2)
        logp = jax.nn.log_softmax(y.reshape(-1, O))
        return -jnp.mean(jnp.take_along_axis(logp, target[:, None], axis=1))

    @jax.jit
    def step(p):
        value, grads = jax.value_and_grad(objective)(p)
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
        scale = jnp.minimum(1.0, 1.0 / (norm + 1e-6))
        return jax.tree_util.tree_map(lambda w, g: w - 1e-3 * scale * g, p, grads), value

    state = {"params": params}

    def train_step():
        state["params"], state["loss"] = step(state["params"])
        state["loss"].block_until_ready()

    median = median_step_seconds(train_step)
    if not bool(jnp.isfinite(state["loss"])):
        sys.exit(f"jax_bench.py: non-finite loss {state['loss']}")
    print(json.dumps({"cell": cell, "workload": name, "threads": threads, "tokens_per_s": T * B / median,
                      "jax": jax.__version__}))


if __name__ == "__main__":
    main()
