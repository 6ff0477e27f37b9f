"""Peer baseline: 3D-DeepLight LRP (preset B-flat) in deeplight-bids (TensorFlow) vs PyTorch + zennit.

Usage (zennit lives in a separate virtual environment, see ``requirements-peers.txt``)::

    python3.11 -m venv /work/venv-peers
    /work/venv-peers/bin/pip install -r benchmarks/requirements-peers.txt
    python benchmarks/bench_zennit.py [--peer-python /work/venv-peers/bin/python] [--batch 4] [--repeats 3]
                                      [--results benchmarks/RESULTS.md]

The same network (3D-DeepLight, full reference grid, 16 outputs, random weights with
non-trivial BN statistics; exported from Keras to ``.npz`` and loaded into a PyTorch
``nn.Sequential`` with the layout transposes ``(kz, ky, kx, in, out) -> (out, in, kz, ky,
kx)`` and channels-last -> channels-first inputs; TF's asymmetric "same" padding of the
stride-2 convolutions becomes an explicit ``ConstantPad3d``), the same inputs, and the
same rules:

- first conv: Flat (zennit ``Flat``);
- other convs: alpha=2, beta=1 with iNNvestigate's bias convention (full bias in both
  denominators; zennit's own ``AlphaBeta`` keeps only ``b+`` / ``b-``, so a small
  ``BasicHook`` subclass below sets the four parameter modifiers accordingly);
- batch norm: iNNvestigate 1.0.8's multiplicative rule ``R_in = x (y - beta) R / stab((x -
  mean) y)`` (zennit has none; a small ``Hook`` below);
- global average pooling: the z-rule (zennit ``Norm``); ReLU: ``Pass``;
- every division stabilised as iNNvestigate's ``safe_divide`` (exact zeros + 1e-7), not
  zennit's default epsilon of 1e-6.

Two persistent child processes (ours in this interpreter's environment, zennit in
``--peer-python``'s) each warm up once, then are asked alternately for one timed
``explain`` (forward pass + relevance, as the participant level runs it), so both see
the same machine load; each uses 2 CPU threads (``--threads``).  Reported: best times,
the ratio ours / zennit (<= 1 means ours is at least as fast), and the largest
difference of the relevance maps (absolute, and relative to the largest magnitude).
Results go to ``--results`` under ``## Peers``.
"""

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import update_section  # benchmarks/_results.py (scripts run from this folder)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
SECTION = "## Peers"
SAFE_EPS = 1e-7


# -- ours (TensorFlow) ---------------------------------------------------------------------------


def ours_worker(npz_path, batch, threads):
    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(HERE))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    from bench_3d import build_random_model
    from torch_twin import save_keras

    from deeplight_bids.lrp.analyzer import LRPAnalyzer

    model = build_random_model()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 91, 109, 91, 1)).astype(np.float32)
    save_keras(model, npz_path, x=x)
    analyzer = LRPAnalyzer(model, composite="preset_b_flat")
    logits, relevance = analyzer.explain(x)
    np.savez(str(npz_path) + ".ours.npz", logits=logits, relevance=relevance)
    serve(lambda: analyzer.explain(x))


def serve(fn):
    """Print 'ready', then time ``fn`` once per line read from stdin."""
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        start = time.perf_counter()
        fn()
        print(f"{time.perf_counter() - start:.6f}", flush=True)


# -- zennit (PyTorch) ----------------------------------------------------------------------------


def _import_zennit():
    """Import zennit; if torchvision is unusable (e.g. a PyPI build that does not match the CPU torch wheel),
    stand in the two ResNet block classes zennit's torchvision canonizers name at import (not used here)."""
    import types as pytypes

    import torch

    try:
        import zennit  # noqa: F401

        return "torchvision ok"
    except (ImportError, RuntimeError) as err:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "zennit"))]:
            del sys.modules[name]
        stub = {
            name: pytypes.ModuleType(name)
            for name in ("torchvision", "torchvision.models", "torchvision.models.resnet")
        }
        stub["torchvision.models.resnet"].Bottleneck = type("Bottleneck", (torch.nn.Module,), {})
        stub["torchvision.models.resnet"].BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
        stub["torchvision"].models = stub["torchvision.models"]
        stub["torchvision.models"].resnet = stub["torchvision.models.resnet"]
        sys.modules.update(stub)
        import zennit  # noqa: F401

        return f"torchvision unusable ({type(err).__name__}); stubbed"


def zennit_worker(npz_path, threads):
    _import_zennit()
    import torch
    from torch import nn
    from torch_twin import build_twin, channels_first
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.core import BasicHook, Hook
    from zennit.rules import ClampMod, Flat, Norm, Pass

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(min(2, threads))

    def safe(z):  # iNNvestigate's safe_divide denominator
        return z + SAFE_EPS * (z == 0).to(z.dtype)

    class AlphaBetaFullBias(BasicHook):
        """Alpha-beta as iNNvestigate: (W+, b+) x+ + (W-, b-) x- and (W-, b-) x+ + (W+, b+) x-."""

        def __init__(self, alpha=2.0, beta=1.0):
            super().__init__(
                input_modifiers=[lambda v: v.clamp(min=0), lambda v: v.clamp(max=0)] * 2,
                param_modifiers=[ClampMod(min=0.0), ClampMod(max=0.0), ClampMod(max=0.0), ClampMod(min=0.0)],
                output_modifiers=[lambda out: out] * 4,
                gradient_mapper=lambda g, outs: [
                    g / safe(d) for d in [outs[0] + outs[1]] * 2 + [outs[2] + outs[3]] * 2
                ],
                reducer=lambda ins, grads: (
                    alpha * (ins[0] * grads[0] + ins[1] * grads[1]) - beta * (ins[2] * grads[2] + ins[3] * grads[3])
                ),
            )

        def copy(self):
            return self.__class__()

    class BatchNormInnvestigate(Hook):
        """iNNvestigate 1.0.8 BN rule: R_in = x (y - beta) R / stab((x - mean) y)."""

        def forward(self, module, input, output):
            self.stored_tensors["input"] = input[0].detach()
            self.stored_tensors["output"] = output.detach()

        def backward(self, module, grad_input, grad_output):
            x, y = self.stored_tensors["input"], self.stored_tensors["output"]
            shape = (1, -1) + (1,) * (x.dim() - 2)
            mean, beta = module.running_mean.view(shape), module.bias.view(shape)
            d = (x - mean) * y
            d = d + SAFE_EPS * torch.where(d >= 0, 1.0, -1.0)
            return (x * (y - beta) * grad_output[0] / safe(d),)

        def copy(self):
            return self.__class__()

    data = np.load(npz_path)
    x = channels_first(data["x"])
    model = build_twin(data, str(data["layers"]), x.shape[2:])
    composite = SpecialFirstLayerMapComposite(
        layer_map=[
            (nn.ReLU, Pass()),
            (nn.Conv3d, AlphaBetaFullBias()),
            (nn.BatchNorm3d, BatchNormInnvestigate()),
            (nn.AdaptiveAvgPool3d, Norm(stabilizer=safe)),
        ],
        first_map=[(nn.Conv3d, Flat(stabilizer=safe))],
    )

    def explain():
        with composite.context(model) as modified:
            inp = x.clone().requires_grad_(True)
            logits = modified(inp)
            start = torch.nn.functional.one_hot(logits.argmax(dim=1), logits.shape[1]).to(logits.dtype) * logits
            (relevance,) = torch.autograd.grad(logits, inp, grad_outputs=start.detach())
        return logits.detach(), relevance

    logits, relevance = explain()
    np.savez(str(npz_path) + ".zennit.npz", logits=logits.numpy(), relevance=relevance[:, 0].numpy())
    serve(explain)


# -- driver --------------------------------------------------------------------------------------


def start(cmd):
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise SystemExit(f"{cmd[:3]} failed to start ({line!r})")
    return proc


def timed(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def machine_line():
    sys.path.insert(0, str(HERE))
    from _results import machine_description

    return machine_description()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=os.environ.get("PEER_PYTHON", "/work/venv-peers/bin/python"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file to update ('' for none)")
    parser.add_argument("--ours-worker", help=argparse.SUPPRESS)
    parser.add_argument("--zennit-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ours_worker:
        return ours_worker(args.ours_worker, args.batch, args.threads)
    if args.zennit_worker:
        return zennit_worker(args.zennit_worker, args.threads)

    peer_versions = subprocess.run(
        [
            args.peer_python,
            "-c",
            "import torch, importlib.metadata as m; print(torch.__version__, m.version('zennit'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    with tempfile.TemporaryDirectory(prefix="benchzennit-") as tmp:
        npz = Path(tmp) / "model.npz"
        me = str(Path(__file__).resolve())
        common = ["--batch", str(args.batch), "--threads", str(args.threads)]
        ours = start([sys.executable, me, "--ours-worker", str(npz), *common])
        peer = start([args.peer_python, me, "--zennit-worker", str(npz), *common])
        t_ours, t_peer = [], []
        for _ in range(args.repeats):
            t_ours.append(timed(ours))
            t_peer.append(timed(peer))
        for proc in (ours, peer):
            proc.stdin.close()
            proc.wait()
        a, b = np.load(str(npz) + ".ours.npz"), np.load(str(npz) + ".zennit.npz")
        logit_diff = float(np.abs(a["logits"] - b["logits"]).max())
        diff = np.abs(a["relevance"] - b["relevance"])
        scale = float(np.abs(a["relevance"]).max())
        same_target = bool((a["logits"].argmax(1) == b["logits"].argmax(1)).all())
    row = {
        "batch": args.batch,
        "repeats": args.repeats,
        "threads": args.threads,
        "ours_s": min(t_ours),
        "zennit_s": min(t_peer),
        "ratio": min(t_ours) / min(t_peer),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max()) / scale,
        "p9999_rel_diff": float(np.quantile(diff, 0.9999)) / scale,
        "max_abs_relevance": scale,
        "logit_max_diff": logit_diff,
        "same_targets": same_target,
        "torch": peer_versions[0],
        "zennit": peer_versions[1],
    }
    print(
        f"repetitions: {args.repeats} alternating timed calls after one warm-up each; batch {args.batch}, "
        f"{args.threads} threads"
    )
    print(
        f"ours (TF): best {row['ours_s']:.2f} s ({args.batch / row['ours_s']:.2f} vol/s); zennit {row['zennit']} "
        f"(torch {row['torch']}): best {row['zennit_s']:.2f} s ({args.batch / row['zennit_s']:.2f} vol/s); "
        f"ratio ours/zennit {row['ratio']:.2f}"
    )
    print(
        f"relevance max |diff| {row['max_abs_diff']:.3g} ({row['max_rel_diff']:.2e} of max |R| "
        f"{scale:.3g}; 99.99th percentile {row['p9999_rel_diff']:.2e}); logits max |diff| {logit_diff:.2e}; "
        f"same targets: {same_target}"
    )
    if args.results:
        write_results(args.results, machine_line(), row)
        print(f"written to {args.results} ({SECTION})")


def write_results(path, machine, row):
    today = datetime.date.today().isoformat()
    lines = [
        SECTION,
        "",
        f"Date: {today}. Machine: {machine}; peer: PyTorch {row['torch']} (CPU), zennit "
        f"{row['zennit']}. Command: `python benchmarks/bench_zennit.py` (see benchmarks/README.md).",
        "",
        "3D-DeepLight LRP (preset B-flat: Flat first conv, alpha 2 / beta 1 other convs with iNNvestigate's "
        "bias convention, iNNvestigate 1.0.8 BN rule, z-rule on global average pooling, ReLU passes; "
        "`safe_divide` stabiliser) on the full grid, the same random weights and inputs in both; forward pass + "
        f"relevance per call, batch {row['batch']}, {row['threads']} threads each; best of {row['repeats']} "
        "alternating calls after a warm-up call.",
        "",
        "| batch | ours (TF) s | zennit s | ours / zennit time | max abs relevance diff | relative to max abs "
        "relevance | logits max abs diff |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {row['batch']} | {row['ours_s']:.2f} | {row['zennit_s']:.2f} | {row['ratio']:.2f} | "
        f"{row['max_abs_diff']:.2e} | {row['max_rel_diff']:.2e} | {row['logit_max_diff']:.2e} |",
    ]
    section = "\n".join(lines) + "\n"
    update_section(path, SECTION, section)


if __name__ == "__main__":
    main()
