#!/usr/bin/env python3
"""Turn this machine's pip configuration into one a container build can use.

Reads ``python -m pip config list`` (the effective settings of every pip configuration
file plus ``PIP_*`` environment variables), and writes into OUT_DIR:

* ``pip.conf``: the same settings, with every local file or folder they name (CA bundle,
  constraints file, ``find-links`` folders, ``file://`` indexes -- these with their
  parent folder, for relative links) rewritten to a path under MOUNT_ROOT (default
  ``/run/host-build``);
* ``volumes``: one ``HOST_PATH:CONTAINER_PATH:ro`` per line, to pass as
  ``podman build -v`` so that those paths exist inside the build;
* ``ca_bundle``: the in-build path of the CA bundle named by ``cert`` (empty if none).

Nothing about this machine is assumed: whatever pip is configured with here is what the
build gets.  Usage: ``pip_build_config.py OUT_DIR [MOUNT_ROOT]``.
"""

import configparser
import re
import subprocess
import sys
from pathlib import Path

LINE = re.compile(r"^(?P<section>:env:|[A-Za-z0-9_-]+)\.(?P<key>[A-Za-z0-9_-]+)=(?P<value>.*)$")


def pip_config_list():
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True
    ).stdout
    settings = {}  # (section, key) -> value; environment variables override files
    env = {}
    for line in out.splitlines():
        match = LINE.match(line.strip())
        if not match:
            continue
        value = match["value"]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if match["section"] == ":env:":
            env[("global", match["key"])] = value
        else:
            settings[(match["section"], match["key"])] = value
    settings.update(env)
    return settings


def main(out_dir, mount_root="/run/host-build"):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mounts = {}  # host path -> container path

    def remap(token):
        prefix, path = ("file://", token[len("file://") :]) if token.startswith("file://") else ("", token)
        if not path.startswith("/") or not Path(path).exists():
            return token
        path = Path(path).resolve()
        # A file:// index (PEP 503 "simple" folder) usually links to files beside it
        # (href="../../files/..."): mount its parent so that those links resolve.
        host, rest = (path.parent, path.name) if prefix and path.parent != path else (path, "")
        if str(host) not in mounts:
            mounts[str(host)] = f"{mount_root}/{len(mounts)}-{host.name or 'root'}"
        return prefix + mounts[str(host)] + (f"/{rest}" if rest else "")

    conf = configparser.ConfigParser(interpolation=None)
    ca_bundle = ""
    for (section, key), value in sorted(pip_config_list().items()):
        new = " ".join(remap(tok) for tok in value.split())
        if key == "cert":
            ca_bundle = new
        if not conf.has_section(section):
            conf.add_section(section)
        conf.set(section, key, new)
    with open(out_dir / "pip.conf", "w") as fobj:
        conf.write(fobj)
    (out_dir / "volumes").write_text("".join(f"{h}:{c}:ro\n" for h, c in mounts.items()))
    (out_dir / "ca_bundle").write_text(ca_bundle + "\n" if ca_bundle else "")
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
