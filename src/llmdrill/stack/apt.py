"""Debian packages the stacks need, installed only when missing (CI runs as root on a
fresh machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from llmdrill.stack import StackError

# Another apt-get (unattended upgrades, a second job) may hold the dpkg lock: wait for it.
APT_LOCK_WAIT = ("-o", "DPkg::Lock::Timeout=600")


class AptError(StackError):
    """A package could not be installed."""


def deb_installed(pkg: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True,
                         text=True, timeout=30)
    return out.returncode == 0 and out.stdout.strip().endswith(" installed")


def apt_install(packages: list[str] | tuple[str, ...]) -> None:
    """apt-get install, and once more after `apt-get update` when the package lists are
    stale (a fresh machine has none)."""
    if not packages:
        return
    if shutil.which("apt-get") is None:
        raise AptError(f"apt-get is missing: install {', '.join(packages)} yourself")
    print(f"installing {', '.join(packages)} (apt)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", *APT_LOCK_WAIT, "install", "-y", "-q", "--no-install-recommends",
           *packages]
    if subprocess.run(cmd, env=env, timeout=1500).returncode == 0:
        return
    subprocess.run(["apt-get", *APT_LOCK_WAIT, "update", "-q"], env=env, timeout=1200,
                   check=False)
    if subprocess.run(cmd, env=env, timeout=1500).returncode != 0:
        raise AptError(f"apt-get install {' '.join(packages)} failed")
