"""Run the CLI with BIDS_DIR really read-only, also as root.

Root ignores permission bits, so ``chmod a-w`` alone proves nothing there.  As root the CLI
runs in a child process that cannot write the folder either way:

1. ``bind``: a read-only bind mount of the folder over itself in a private mount namespace
   (``unshare -m``; needs CAP_SYS_ADMIN), or
2. ``nobody``: the child drops to uid/gid 65534 (``setpriv``) on a copy made
   world-readable, owned by root and ``a-w``, inside a world-traversable temporary folder.

Not root: the folder is made ``a-w`` and the child runs as this user.
"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

NOBODY = 65534


def _cli_env(home):
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0", HOME=str(home))
    return env


def bind_mount_works(probe_parent):
    """True when ``unshare -m`` + a read-only bind mount makes a write fail (root + CAP_SYS_ADMIN)."""
    exe = shutil.which("unshare")
    if exe is None or os.geteuid() != 0:
        return False
    probe = Path(tempfile.mkdtemp(dir=probe_parent))
    cmd = [
        exe,
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f"mount --bind -o ro '{probe}' '{probe}' && ! touch '{probe}/x' 2>/dev/null",
    ]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _set_read_only(root, read_only):
    for path in [root, *Path(root).rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if read_only:
            path.chmod(
                mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
                | stat.S_IRUSR
                | stat.S_IRGRP
                | stat.S_IROTH
                | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if path.is_dir() else 0)
            )
        else:
            path.chmod(mode | stat.S_IWUSR)


def run_cli_read_only(bids_dir, out_dir, args, inputs, scratch, method=None, timeout=600):
    """``python -m deeplight_bids COPY_OF_BIDS_DIR out_dir *args`` with the copy read-only for the child.

    Parameters
    ----------
    bids_dir : Path
        The dataset; a copy of it is what the child reads (the original is never changed).
    out_dir : Path
        OUTPUT_DIR of the run (created writable for the child).
    args : list of str
        Arguments after ``BIDS_DIR OUTPUT_DIR`` (the level first). Paths in ``inputs`` are
        substituted: a value equal to ``str(key)`` becomes the child's copy of it.
    inputs : list of Path
        Other files/folders the child reads (e.g. ``--weights``): copied world-readable
        for the ``nobody`` method, used in place otherwise.
    scratch : Path
        A folder for the copies.
    method : {None, "bind", "nobody", "chmod"}
        None picks ``chmod`` when not root, else ``bind`` when it works, else ``nobody``.

    Returns
    -------
    (subprocess.CompletedProcess, str, Path)
        The finished child (text output), the method used, and the folder holding its
        outputs (``out_dir``; for ``nobody`` a copy of the child's OUTPUT_DIR placed there).
    """
    if method is None:
        if os.geteuid() != 0:
            method = "chmod"
        else:
            method = "bind" if bind_mount_works(scratch) else "nobody"
    scratch = Path(scratch)
    if method == "nobody":
        # pytest's basetemp is 0700 root: the unprivileged child needs a traversable root of its own
        base = Path(tempfile.mkdtemp(prefix="deeplight-ro-"))
        base.chmod(0o755)
    else:
        base = scratch
    ro = base / "bids"
    shutil.copytree(bids_dir, ro, symlinks=True)
    mapping = {}
    for src in inputs:
        if method == "nobody":
            dst = base / f"input-{len(mapping)}-{Path(src).name}"
            (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dst)
            _set_read_only(dst, True)
            mapping[str(src)] = str(dst)
    argv = [mapping.get(str(a), str(a)) for a in args]
    home = base / "home"
    home.mkdir()
    requested_out = out_dir
    out_dir = Path(out_dir) if method != "nobody" else base / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "deeplight_bids", str(ro), str(out_dir), *argv]
    _set_read_only(ro, True)
    if method == "bind":
        inner = " ".join(f"'{c}'" for c in cli)
        cmd = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount --bind -o ro '{ro}' '{ro}' && exec {inner}",
        ]
    elif method == "nobody":
        for folder in (home, out_dir):
            os.chown(folder, NOBODY, NOBODY)
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cli]
    elif method == "chmod":
        if os.geteuid() == 0:
            raise RuntimeError("chmod cannot make a folder read-only for root")
        cmd = cli
    else:
        raise ValueError(f"unknown method {method!r}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_cli_env(home), cwd=base)
    finally:
        _set_read_only(ro, False)
    if method == "nobody":
        # the caller reads the outputs where it asked for them
        wanted = Path(requested_out)
        shutil.copytree(out_dir, wanted, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(base, ignore_errors=True)
        return proc, method, wanted
    return proc, method, out_dir
