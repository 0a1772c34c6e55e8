#!/usr/bin/env python3
"""The reference training step in PyTorch, for `cargo xtask bench --peer torch`.

    python3 scripts/torch_bench.py WORKLOAD [THREADS] [CELL]   -> one JSON line with tokens_per_s

Same step as bench-suite: nn.RNN (or nn.LSTM / nn.GRU, CELL = rnn | lstm | gru; an LSTM with
proj_size on the projected workloads) + Linear head at every step, MSE or cross-entropy (mean),
backward, clip_grad_norm_(1.0), SGD(lr=1e-3). Workload shapes: scripts/workloads.py.
"""
import json
import sys

from workloads import PROJECTIONS, WORKLOADS, median_step_seconds

import torch
import torch.nn as nn
import torch.nn.functional as F


def main():
    name = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    cell = sys.argv[3] if len(sys.argv) > 3 else "rnn"
    torch.set_num_threads(threads)
    T, B, I, H, O, loss = WORKLOADS[name]
    torch.manual_seed(0)
    proj = PROJECTIONS.get(name, 0)
    extra = {"proj_size": proj} if proj else {}
    rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](I, H, **extra)
    head = nn.Linear(proj or H, O)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=1e-3)
    x = torch.randn(T, B, I)
    target = torch.randn(T, B, O) if loss == "mse" else torch.randint(0, O, (T * B,))

    def step():
        opt.zero_grad()
        y = head(rnn(x)[0])
        value = F.mse_loss(y, target) if loss == "mse" else F.cross_entropy(y.reshape(-1, O), target)
        value.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    median = median_step_seconds(step)
    print(json.dumps({"cell": cell, "workload": name, "threads": threads, "tokens_per_s": T * B / median,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
