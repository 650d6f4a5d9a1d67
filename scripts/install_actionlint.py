"""Builds actionlint (the GitHub Actions workflow checker) from the Go module proxy into a
per-user cache keyed by version, once; prints the binary's path. `make lint` runs it on the
shipped workflow. Usage: python scripts/install_actionlint.py"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = "v1.7.12"
MODULE = "github.com/rhysd/actionlint/cmd/actionlint"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmdrill" / "actionlint" / VERSION


def main() -> int:
    target = cache_dir() / "actionlint"
    if target.exists():
        print(target)
        return 0
    go = os.environ.get("LLMDRILL_GO") or shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        print(f"go is missing (set LLMDRILL_GO): it builds actionlint {VERSION}", file=sys.stderr)
        return 2
    partial = cache_dir().with_name(f"{VERSION}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # GOTOOLCHAIN=local: never download another Go; GOWORK=off: no go.work joins the build.
    env = {**os.environ, "GOBIN": str(partial), "CGO_ENABLED": "0", "GOTOOLCHAIN": "local",
           "GOWORK": "off", "GOFLAGS": "-trimpath"}
    print(f"building actionlint {VERSION} from the Go module proxy", file=sys.stderr)
    done = subprocess.run([go, "install", f"{MODULE}@{VERSION}"], env=env, timeout=1200)
    if done.returncode != 0 or not (partial / "actionlint").exists():
        print(f"go install {MODULE}@{VERSION} failed", file=sys.stderr)
        return 2
    shutil.rmtree(cache_dir(), ignore_errors=True)
    partial.rename(cache_dir())
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
