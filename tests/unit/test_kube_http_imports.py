"""The driver's processes talk to the API server through csidriver.kube alone: importing them loads neither the
generated Kubernetes client nor an HTTP library (they held most of each process's memory and start-up time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("kubernetes_asyncio", "kubernetes", "aiohttp", "urllib3", "requests", "yarl", "multidict")


def _modules_loaded_by(module: str) -> set[str]:
    """Every module a fresh interpreter holds once it has imported `module`."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    return set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout))


@pytest.mark.parametrize("module", ["csidriver.agent.app", "csidriver.controller.app", "csidriver.plugin.cli"])
def test_importing_a_process_loads_no_kubernetes_or_http_library(module: str) -> None:
    loaded = {m.split(".")[0] for m in _modules_loaded_by(module)}
    assert "csidriver" in loaded
    assert loaded.isdisjoint(HEAVY), f"{module} imports {sorted(loaded & set(HEAVY))}"


def test_only_the_controller_loads_the_compiled_watch_decoder() -> None:
    """The agent runs on every node and reads a few objects of its own: it does without msgspec (about 0.7 MiB)."""
    agent = _modules_loaded_by("csidriver.agent.app")
    assert "msgspec" not in agent and "csidriver.kube.wire" not in agent
    assert "csidriver.kube.wire" in _modules_loaded_by("csidriver.controller.app")
