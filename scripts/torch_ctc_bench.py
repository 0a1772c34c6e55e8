#!/usr/bin/env python3
"""PyTorch's CTC loss, forward and backward, on bench-suite's `ctc` shape:

    pip install torch && python3 scripts/torch_ctc_bench.py

T = 500 steps, B = 32 sequences, C = 30 classes (0 the blank), targets of 100 labels, f32
logits through log_softmax (as a model's head feeds nn.CTCLoss), reduction "mean"; one
thread and two. Prints the median of 20 runs after 3 warm-ups, in ms.
"""
import statistics
import time

import torch
import torch.nn.functional as F

T, B, C, S = 500, 32, 30, 100


def main():
    g = torch.Generator().manual_seed(0)
    logits = (torch.rand(T, B, C, generator=g) * 6 - 3).requires_grad_()
    targets = torch.randint(1, C, (B, S), generator=g)
    input_lengths = torch.full((B,), T)
    target_lengths = torch.full((B,), S)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        times = []
        for run in range(23):
            start = time.perf_counter()
            loss = F.ctc_loss(F.log_softmax(logits, -1), targets, input_lengths, target_lengths)
            loss.backward()
            logits.grad = None
            if run >= 3:
                times.append((time.perf_counter() - start) * 1e3)
        print(f"torch {torch.__version__}, {threads} thread(s): "
              f"{statistics.median(times):.1f} ms (loss {loss.item():.4f})")


if __name__ == "__main__":
    main()
