"""Shared helpers of the benchmark scripts: machine line, peak RSS, the CLI in a child, RESULTS.md sections."""

import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: Issue 8: peak RSS of a 405-volume participant run, 3D and 2D, at any batch size.
RSS_LIMIT_MIB = 3 * 1024


def _mib(ru_maxrss):
    """``ru_maxrss`` in MiB (Linux reports KiB, macOS bytes)."""
    return ru_maxrss / (1024 * 1024) if platform.system() == "Darwin" else ru_maxrss / 1024


def peak_rss_mib():
    """Peak resident set size of this process in MiB."""
    return _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def machine_description():
    """CPU model, core count, memory, OS and library versions, as one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        total_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {total_kib / 1024**2:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import keras
    import tensorflow as tf

    devices = sorted({d.device_type for d in tf.config.list_logical_devices()})
    return (
        f"{cpu}, {affinity} usable CPU cores of {os.cpu_count()}{memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, devices {'/'.join(devices)}"
    )


def run_cli_child(args, log_path, env=None):
    """Run ``deeplight-bids ARGS`` in a child process, output to ``log_path``.

    Returns ``(log text, wall seconds, peak RSS of that child in MiB)`` (``os.wait4``: the
    child and nothing else); exits with the log's tail when the run fails.
    """
    exe = shutil.which("deeplight-bids") or str(Path(sys.executable).parent / "deeplight-bids")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([exe, *map(str, args)], stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    text = Path(log_path).read_text()
    if code != 0:
        print(text[-3000:], file=sys.stderr)
        raise SystemExit(f"participant run failed (exit {code})")
    return text, elapsed, _mib(usage.ru_maxrss)


def update_section(path, heading, section):
    """Put ``section`` (text starting with ``heading``) into the markdown file ``path``.

    An existing section with the same heading is replaced (up to the next ``## `` heading);
    otherwise the section is appended. Other sections are kept as they are.
    """
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
