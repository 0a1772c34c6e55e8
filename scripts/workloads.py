"""What the peer scripts (torch_bench.py, jax_bench.py) share: the benchmark workloads,
name -> (T, B, I, H, O, loss) and the projected ones' proj_size, which mirror
bench-suite/src/lib.rs, and how a step is timed."""
import time

WORKLOADS = {
    "tiny": (100, 1, 16, 64, 16, "mse"), "small": (100, 16, 32, 128, 32, "mse"),
    "medium": (100, 32, 64, 256, 64, "ce"), "char": (128, 32, 65, 512, 65, "ce"),
    "large": (50, 64, 256, 1024, 256, "mse"), "seq16": (16, 32, 64, 256, 64, "ce"),
    "seq64": (64, 32, 64, 256, 64, "ce"), "seq256": (256, 32, 64, 256, 64, "ce"),
    "seq1024": (1024, 32, 64, 256, 64, "ce"), "medium_t4096": (4096, 32, 64, 256, 64, "ce"),
    "medium_h128": (100, 32, 64, 128, 64, "ce"), "medium_h512": (100, 32, 64, 512, 64, "ce"),
    "medium_h1024": (100, 32, 64, 1024, 64, "ce"), "medium_b1": (100, 1, 64, 256, 64, "ce"),
    "medium_b8": (100, 8, 64, 256, 64, "ce"), "medium_b128": (100, 128, 64, 256, 64, "ce"),
    "char_p128": (128, 32, 65, 512, 65, "ce"),
}

# Workloads whose LSTM projects its state (proj_size): name -> P.
PROJECTIONS = {"char_p128": 128}


def median_step_seconds(step):
    """The median wall time of `step()` (which must return only when its work is done), over
    at least 5 calls and up to 2 seconds or 1000 calls, after one warm-up call."""
    step()
    times, begin = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - begin < 2.0 and len(times) < 1000):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]
