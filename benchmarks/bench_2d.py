"""2D-DeepLight decode throughput on the full reference grid.

Usage::

    python benchmarks/bench_2d.py [--batch-sizes 1 4 8] [--repeats 5] [--weights PATH.npy]

Prints, per batch size, the best-of-``repeats`` forward time and volumes/s, and the
process's peak resident memory so far (``ru_maxrss``: it only grows, so each row is
the peak up to and including that batch size).  Without ``--weights`` the model keeps
its random initial weights (the speed does not depend on the values).
"""

import argparse
import os
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))


def peak_rss_mib():
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", help="published 2D .npy to convert first (optional)")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from deeplight_bids.models.two import INPUT_SHAPE_2D, build_2d_deeplight

    if args.weights:
        from deeplight_bids.models.published_2d import convert_published_2d, load_published_2d

        model = convert_published_2d(load_published_2d(args.weights))
    else:
        model = build_2d_deeplight()
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    print(f"2D-DeepLight decode, input {INPUT_SHAPE_2D} (z, y, x, 1); keras {keras.__version__}, "
          f"tensorflow {tf.__version__}, {os.cpu_count()} CPUs, devices "
          f"{[d.device_type for d in tf.config.list_logical_devices()]}")
    print(f"{'batch':>5} {'first call s':>12} {'best s':>8} {'volumes/s':>10} {'peak RSS MiB':>13}")
    rng = np.random.default_rng(0)
    for batch in args.batch_sizes:
        x = tf.constant(rng.standard_normal((batch, *INPUT_SHAPE_2D)).astype(np.float32))
        start = time.perf_counter()
        forward(x).numpy()  # trace + first run
        first = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            forward(x).numpy()
            times.append(time.perf_counter() - start)
        best = min(times)
        print(f"{batch:>5} {first:>12.2f} {best:>8.3f} {batch / best:>10.2f} {peak_rss_mib():>13.0f}", flush=True)


if __name__ == "__main__":
    main()
