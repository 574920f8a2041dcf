"""The plugin's top-level usage names every command it has."""

from __future__ import annotations

import argparse

from csidriver.plugin import cli


def test_usage_lists_every_command() -> None:
    parser = cli.parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    usage = cli.__doc__ or ""
    missing = [name for name in sub.choices if name not in usage]
    assert not missing, f"commands missing from the usage text: {missing}"
