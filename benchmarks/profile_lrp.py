"""Per-layer time and memory of 3D-DeepLight's LRP backward pass on the full grid (issue 19).

Usage::

    python benchmarks/profile_lrp.py [--batch 4] [--repeats 2] [--onednn-verbose]

The forward pass runs once (inputs, outputs and linear outputs of every layer kept); then
each layer's rule is compiled on its own (``tf.function``, as inside the analyzer) and
timed on the recorded tensors, in the analyzer's order (last layer first).  For each
layer the script prints the best time of ``repeats`` calls, the layer's forward time
(the layer called on the same input), and the rise of the resident set size during the
rule (sampled every 2 ms by a thread; the rise above the RSS before the call, i.e. the
rule's temporaries plus the allocator's and oneDNN's scratch).  The whole analyzer is
then timed once more against decode, side by side.

``--onednn-verbose`` instead runs one ``LRPAnalyzer.explain`` with ``ONEDNN_VERBOSE=1``
in a child and sums oneDNN's own execution times by primitive kind, implementation and
propagation kind (which kernels oneDNN picked on this host, and what they cost).
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler:
    """Peak RSS (MiB) of this process while the ``with`` block runs, sampled every ``interval`` s."""

    def __init__(self, interval=0.002):
        self.interval = interval

    def __enter__(self):
        self.start = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def _best(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def profile_layers(batch, repeats, composite="preset_b_flat"):
    import tensorflow as tf
    from bench_3d import build_random_model
    from keras import ops

    from deeplight_bids.lrp.analyzer import LRPAnalyzer
    from deeplight_bids.models.decode import Decoder
    from deeplight_bids.models.three import INPUT_SHAPE_3D

    model = build_random_model()
    analyzer = LRPAnalyzer(model, composite=composite)
    x = np.random.default_rng(0).standard_normal((batch, *INPUT_SHAPE_3D)).astype(np.float32)

    @tf.function
    def forward(x):
        ins, outs, lins = [], [], []
        a = x
        for layer, rule in analyzer.layer_rules:
            ins.append(a)
            if getattr(rule, "uses_linear_output", False):
                lin = rule.linear_output(layer, a)
                a = rule.finish_forward(layer, lin)
            else:
                lin = None
                a = layer(a, training=False)
            lins.append(lin if lin is not None else tf.zeros(()))
            outs.append(a)
        return ins, outs, lins

    ins, outs, lins = forward(tf.constant(x))
    logits = outs[-1]
    target = ops.cast(ops.argmax(logits, axis=-1), "int32")
    relevance = ops.one_hot(target, logits.shape[-1], dtype=logits.dtype) * logits
    rows = []
    n = len(analyzer.layer_rules)
    for i in reversed(range(n)):
        layer, rule = analyzer.layer_rules[i]
        uses_lin = getattr(rule, "uses_linear_output", False)
        if uses_lin:
            step = tf.function(lambda a, r, y, lin, layer=layer, rule=rule: rule(layer, a, r, y_out=y, linear_out=lin))
        else:
            step = tf.function(lambda a, r, y, lin, layer=layer, rule=rule: rule(layer, a, r, y_out=y))
        layer_fwd = tf.function(lambda a, layer=layer: layer(a, training=False))
        args = (ins[i], relevance, outs[i], lins[i])
        new_relevance = step(*args)  # trace
        with RssSampler() as rss:
            t_rule = _best(lambda step=step, args=args: step(*args).numpy(), repeats)
        t_fwd = _best(lambda layer_fwd=layer_fwd, x_in=ins[i]: layer_fwd(x_in).numpy(), repeats)
        rows.append(
            {
                "layer": layer.name,
                "rule": type(rule).__name__,
                "in_shape": list(ins[i].shape),
                "out_shape": list(outs[i].shape),
                "rule_s": t_rule,
                "forward_s": t_fwd,
                "rss_rise_mib": rss.peak - rss.start,
                "rss_before_mib": rss.start,
            }
        )
        relevance = new_relevance
    del ins, outs, lins, relevance

    decoder = Decoder(model)
    decoder.logits(x)
    analyzer.explain(x)
    t_lrp, t_dec = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        analyzer.explain(x)
        t_lrp.append(time.perf_counter() - start)
        start = time.perf_counter()
        decoder.logits(x)
        t_dec.append(time.perf_counter() - start)
    return rows, min(t_lrp), min(t_dec)


def print_layers(rows, t_lrp, t_dec, batch):
    total_rule = sum(r["rule_s"] for r in rows)
    total_fwd = sum(r["forward_s"] for r in rows)
    print(
        f"batch {batch}: explain {t_lrp:.2f} s, decode {t_dec:.2f} s, ratio {t_lrp / t_dec:.2f}x; "
        f"sum of rules alone {total_rule:.2f} s, sum of layer forwards alone {total_fwd:.2f} s"
    )
    print(
        f"{'layer':<15} {'rule':<15} {'input shape':<26} {'rule s':>7} {'share':>6} {'fwd s':>6} {'rule/fwd':>8} "
        f"{'RSS rise MiB':>12}"
    )
    for r in rows:
        if r["rule_s"] < 0.01 * total_rule and r["rss_rise_mib"] < 50:
            continue
        print(
            f"{r['layer']:<15} {r['rule']:<15} {tuple(r['in_shape'])!s:<26} {r['rule_s']:>7.3f} "
            f"{r['rule_s'] / total_rule:>6.1%} {r['forward_s']:>6.3f} {r['rule_s'] / max(r['forward_s'], 1e-9):>8.1f} "
            f"{r['rss_rise_mib']:>12.0f}"
        )


def onednn_verbose(batch):
    """Run one explain with ONEDNN_VERBOSE=1 in a child; sum oneDNN exec times by kind."""
    code = (
        "import sys, numpy as np; sys.path.insert(0, 'benchmarks'); from bench_3d import build_random_model;"
        "from deeplight_bids.lrp.analyzer import LRPAnalyzer; from deeplight_bids.models.decode import Decoder;"
        "from deeplight_bids.models.three import INPUT_SHAPE_3D;"
        f"x = np.random.default_rng(0).standard_normal(({batch}, *INPUT_SHAPE_3D)).astype(np.float32);"
        "m = build_random_model(); a = LRPAnalyzer(m); d = Decoder(m); a.explain(x); d.logits(x);"
        "import resource; r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "print('@@LRP', flush=True); a.explain(x); print('@@DECODE', flush=True); d.logits(x);"
        "print('@@RSS', r0 / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)"
    )
    env = dict(os.environ, ONEDNN_VERBOSE="1", PYTHONPATH=str(HERE.parent))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=HERE.parent, check=False
    )
    phase, sums = None, {"LRP": collections.defaultdict(float), "DECODE": collections.defaultdict(float)}
    counts = {"LRP": collections.Counter(), "DECODE": collections.Counter()}
    for line in proc.stdout.splitlines():
        if line.startswith("@@RSS"):
            print(
                f"peak RSS after warm-up calls {float(line.split()[1]):.0f} MiB, at the end {float(line.split()[2]):.0f} MiB"
            )
            continue
        if line.startswith("@@"):
            phase = line[2:]
            continue
        if phase is None or not line.startswith("onednn_verbose") or ",exec," not in line:
            continue
        fields = line.split(",")
        # onednn_verbose,[timestamp,]primitive,exec,cpu,KIND,IMPL,PROP,...,SHAPES,TIME
        i = fields.index("exec")
        kind, impl, prop = fields[i + 2], fields[i + 3], fields[i + 4]
        shapes = fields[-2]
        key = (kind, impl, prop, shapes)
        sums[phase][key] += float(fields[-1])
        counts[phase][key] += 1
    for phase in ("DECODE", "LRP"):
        total = sum(sums[phase].values())
        print(f"\n{phase}: oneDNN primitives {total / 1000:.2f} s in all")
        for key, ms in sorted(sums[phase].items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {ms:8.1f} ms x{counts[phase][key]:<3} {key[0]:<14} {key[1]:<28} {key[2]:<20} {key[3][:90]}")
    if proc.returncode != 0:
        print(proc.stderr[-2000:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--composite", default="preset_b_flat", help="LRP composite to profile (default: the published preset_b_flat)"
    )
    parser.add_argument("--onednn-verbose", action="store_true")
    parser.add_argument("--json", help="write the per-layer rows here")
    args = parser.parse_args(argv)
    if args.onednn_verbose:
        onednn_verbose(args.batch)
        return
    rows, t_lrp, t_dec = profile_layers(args.batch, args.repeats, args.composite)
    print_layers(rows, t_lrp, t_dec, args.batch)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "explain_s": t_lrp, "decode_s": t_dec}, indent=1))


if __name__ == "__main__":
    main()
