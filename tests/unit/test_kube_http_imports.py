"""The driver's processes talk to the API server through csidriver.kube alone: importing them loads neither the
generated Kubernetes client nor an HTTP library (they held most of each process's memory and start-up time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("kubernetes_asyncio", "kubernetes", "aiohttp", "urllib3", "requests", "yarl", "multidict")


@pytest.mark.parametrize("module", ["csidriver.agent.app", "csidriver.controller.app", "csidriver.plugin.cli"])
def test_importing_a_process_loads_no_kubernetes_or_http_library(module: str) -> None:
    code = f"import json, sys; import {module}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    assert "csidriver" in loaded
    assert loaded.isdisjoint(HEAVY), f"{module} imports {sorted(loaded & set(HEAVY))}"


def test_only_the_controller_loads_the_compiled_watch_decoder() -> None:
    """The agent runs on every node and reads a few objects of its own: it does without msgspec (about 0.7 MiB)."""
    code = "import json, sys; import csidriver.agent.app; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout))
    assert "msgspec" not in loaded and "csidriver.kube.wire" not in loaded
    code = "import json, sys; import csidriver.controller.app; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout))
    assert "csidriver.kube.wire" in loaded
