"""Peak memory of a full-grid 3D LRP pass (issue 19): at most 3 GiB at any batch size in a 3 GiB job.

The pass runs in a child process and reads its own peak from ``VmHWM`` in
``/proc/self/status`` (not ``ru_maxrss``: Linux carries the forking parent's resident size
across ``execve`` into it, so a child of a 4 GB pytest worker would report 4 GB).  Memory is deterministic enough to test, speed is not.  Before
the per-sample stem (``LRPAnalyzer(model, max_batch=None, stem_batch=None)``, the old
behaviour) the same child peaked at 3695 MiB at batch 8 on a 2-core Intel Xeon (AVX-512), 2672 MiB after;
RESULTS.md's AMD EPYC figures were 3495 MiB at batch 8 and up to 3450 MiB at batch 4.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: The 3 GiB target of issues 8 and 19, in MiB.
RSS_LIMIT_MIB = 3 * 1024

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from deeplight_bids.lrp.analyzer import LRPAnalyzer, stem_batch_for_memory
    from deeplight_bids.models.three import INPUT_SHAPE_3D, build_3d_deeplight
    from tests.models.legacy_h5 import randomise_weights

    batch, old = int(sys.argv[1]), sys.argv[2] == "old"
    model = randomise_weights(build_3d_deeplight(n_states=16), seed=3)
    x = np.random.default_rng(0).standard_normal((batch, *INPUT_SHAPE_3D)).astype(np.float32)
    # "new": a job with 3 GiB (--mem-mb 3072, or a SLURM/cgroup limit of that size)
    analyzer = (LRPAnalyzer(model, max_batch=None, stem_batch=None) if old
                else LRPAnalyzer(model, stem_batch=stem_batch_for_memory(3072)))
    logits, relevance = analyzer.explain(x)
    status = open("/proc/self/status").read()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    print(json.dumps({"peak_rss_mib": peak_kib / 1024,
                      "shape": list(relevance.shape), "finite": bool(np.isfinite(relevance).all()),
                      "max_batch": analyzer.max_batch, "stem_batch": analyzer.stem_batch, "n_stem": analyzer.n_stem}))
""")


def explain_in_child(batch, variant="new"):
    """Peak RSS (MiB) and facts of one full-grid ``LRPAnalyzer.explain`` in a fresh interpreter."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        KERAS_BACKEND="tensorflow",
        CUDA_VISIBLE_DEVICES="",
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(batch), variant],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_full_grid_lrp_at_batch_8_stays_within_3_gib():
    result = explain_in_child(8)
    assert result["shape"] == [8, 91, 109, 91] and result["finite"]
    # 4 volumes per pass on CPU; with 3 GiB the 7 full-resolution layers (conv_1 ... conv_3) one volume at a time
    assert (result["max_batch"], result["stem_batch"], result["n_stem"]) == (4, 1, 7)
    assert result["peak_rss_mib"] <= RSS_LIMIT_MIB, f"peak RSS {result['peak_rss_mib']:.0f} MiB"
