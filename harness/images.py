"""The container images that the real-node tests and benches install, built once by hack/image.sh (cached outside
the repo)."""

from __future__ import annotations

import os
import subprocess

from harness.tools import ROOT


def build_images() -> list[str]:
    """Archives of every image deploy/ names plus pause, built once by hack/image.sh (cached outside the repo)."""
    done = subprocess.run([str(ROOT / "hack" / "image.sh")], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"hack/image.sh failed:\n{done.stderr[-4000:]}")
    paths = done.stdout.split()
    assert paths and all(os.path.exists(p) for p in paths), paths
    return paths
