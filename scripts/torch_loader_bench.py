#!/usr/bin/env python3
"""PyTorch on the `loader` bench's ragged epoch, for comparison with

    BENCH_WORKLOADS=loader cargo bench -p bench-suite --bench train_step -- loader

    python3 scripts/torch_loader_bench.py [THREADS] [--every-step]
        -> one JSON line per case, ms per epoch

256 sequences of 16-256 steps (I = 32), batches of 32 in a shuffled order: nn.LSTM(32, 128)
over pack_padded_sequence(enforce_sorted=False) (PyTorch sorts each batch and computes only
the running sequences of each step), nn.Linear(128, 4) on each sequence's last state,
cross-entropy (mean), Adam(1e-3). Cases: `packed` (the batch as it comes; PyTorch sorts it),
`padded` (no packing: every step computes every row, the loss read at each sequence's own
last step), `packed_bucketed8` and `padded_bucketed8` (pools of 8 batches sorted by length, as
`Loader::bucketed(8)`).

With `--every-step` (the bench's `loader_lstm_lengths16to256_every_step_o1000_t1`): a label
out of 1000 at every step, nn.Linear(128, 1000) on every output, cross-entropy (mean) over
the sequences' own steps (padding ignored), the packed case on the packed outputs.
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence


def main():
    args = [a for a in sys.argv[1:] if a != "--every-step"]
    every_step = "--every-step" in sys.argv[1:]
    threads = int(args[0]) if args else 1
    torch.set_num_threads(threads)
    n, i, h, batch = 256, 32, 128, 32
    classes = 1000 if every_step else 4
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(16, 257, (n,), generator=g)
    xs = [torch.rand(int(l), i, generator=g) * 2 - 1 for l in lengths]
    labels = torch.randint(0, classes, (n,), generator=g)
    g_steps = torch.Generator().manual_seed(1)  # leaves the shuffled order as it was
    step_labels = [torch.randint(0, classes, (int(l),), generator=g_steps) for l in lengths]
    torch.manual_seed(0)
    rnn, head = nn.LSTM(i, h), nn.Linear(h, classes)
    opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)

    order = torch.randperm(n, generator=g)
    shuffled = [order[k:k + batch] for k in range(0, n, batch)]
    pools = []
    for k in range(0, n, 8 * batch):
        pool = order[k:k + 8 * batch]
        pool = pool[torch.argsort(lengths[pool], descending=True, stable=True)]
        pools += [pool[j:j + batch] for j in range(0, len(pool), batch)]

    def epoch(batches, packed):
        for idx in batches:
            x = pad_sequence([xs[j] for j in idx])  # [T, B, I]
            lens = lengths[idx]
            opt.zero_grad()
            if every_step and packed:
                out, _ = rnn(pack_padded_sequence(x, lens, enforce_sorted=False))
                ys = pack_padded_sequence(pad_sequence([step_labels[j] for j in idx]), lens,
                                          enforce_sorted=False)
                loss = F.cross_entropy(head(out.data), ys.data)
            elif every_step:
                out, _ = rnn(x)
                ys = pad_sequence([step_labels[j] for j in idx], padding_value=-100)
                loss = F.cross_entropy(head(out).flatten(0, 1), ys.flatten(), ignore_index=-100)
            elif packed:
                _, (h_n, _) = rnn(pack_padded_sequence(x, lens, enforce_sorted=False))
                last = h_n[-1]
            else:
                out, _ = rnn(x)
                last = out[lens - 1, torch.arange(len(idx))]
            if not every_step:
                loss = F.cross_entropy(head(last), labels[idx])
            loss.backward()
            opt.step()

    for name, batches, packed in [("packed", shuffled, True), ("padded", shuffled, False),
                                  ("packed_bucketed8", pools, True),
                                  ("padded_bucketed8", pools, False)]:
        epoch(batches, packed)  # warm-up
        times = []
        for _ in range(5):
            start = time.perf_counter()
            epoch(batches, packed)
            times.append(time.perf_counter() - start)
        times.sort()
        print(json.dumps({"case": name, "every_step": every_step, "threads": threads,
                          "ms_per_epoch": 1e3 * times[2],
                          "torch": torch.__version__}))


if __name__ == "__main__":
    main()
