"""Small busybox containers on a real Docker Engine, for tests of Docker faults that need no
engine inside (pause, stop, squeeze, hog), and what a fault could leave behind on them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors

from llmdrill.stack.docker_stack import BASE_IMAGE, DockerStack

BOX_MEMORY = 64 * 1024 * 1024
HOG_MARK = "sleep 999"  # the hog's last command: sh execs it, so it is what runs


@contextlib.contextmanager
def docker_engine() -> Iterator[Any]:
    """A client of the local engine: started here (and stopped after) if not running."""
    import docker

    stack = DockerStack()
    stack.install()
    already = stack.engine_ok()
    stack.start_engine()
    stack.build_image()
    client = docker.DockerClient(base_url=stack.config.host, timeout=30)
    try:
        yield client
    finally:
        client.close()
        if not already:
            stack.stop_engine()


@contextlib.contextmanager
def boxes(client: Any, n: int = 2) -> Iterator[list[Any]]:
    label = f"t{uuid.uuid4().hex[:8]}"
    made = [client.containers.run(BASE_IMAGE, ["sleep", "100000"], detach=True,
                                  name=f"llmdrill-box-{label}-{i}", network_mode="host",
                                  labels={"llmdrill.test": label}, mem_limit=BOX_MEMORY,
                                  memswap_limit=2 * BOX_MEMORY, stop_signal="SIGKILL")
            for i in range(n)]
    try:
        yield made
    finally:
        for c in made:
            c.remove(force=True)


def hog_command() -> list[str]:
    return ["sh", "-c", f"x=$(head -c {{size}} /dev/zero | tr '\\0' a); {HOG_MARK}"]


def residue(containers: list[Any]) -> list[str]:
    """Anything but running, unpaused, with the original limits, no hog, default OOM
    scores."""
    left = []
    for c in containers:
        c.reload()
        state, hc = c.attrs["State"], c.attrs["HostConfig"]
        if state["Status"] != "running":
            left.append(f"{c.name} {state['Status']}")
        if hc["Memory"] != BOX_MEMORY or hc["MemorySwap"] != 2 * BOX_MEMORY:
            left.append(f"{c.name} memory {hc['Memory']}/{hc['MemorySwap']}")
        if hc["CpuQuota"] not in (0, -1):
            left.append(f"{c.name} cpu quota {hc['CpuQuota']}")
        if state["Status"] != "running":
            continue
        try:
            top = c.top()
        except docker.errors.APIError:  # stopped since the reload above
            c.reload()
            left.append(f"{c.name} {c.attrs['State']['Status']}")
            continue
        hog = any(HOG_MARK in p[-1] for p in top["Processes"])
        # The OOM scores are read from the host's /proc (top lists host PIDs), not with an
        # exec: an exec into a container paused between the reload and it never returned
        # (a CI run hung 900 s here).
        pid = top["Titles"].index("PID")
        if hog:
            left.append(f"{c.name} hog")
        if any(_oom_score_adj(int(p[pid])) > 0 for p in top["Processes"]):
            left.append(f"{c.name} oom_score_adj raised")
    return left


def _oom_score_adj(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/oom_score_adj").read_text())
    except (OSError, ValueError):  # the process ended meanwhile
        return 0
