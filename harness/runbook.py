"""Runbooks in docs/ as tests: a test runs the commands of a marked shell block, step by step, in the doc's order.

A runbook is the ```sh block after `<!-- runbook:NAME -->`. `# N. Title` lines start steps; every other line is a
`kubectl device-localpv …` command whose UPPER_CASE placeholders the test fills in. What a person does by hand
(moving a disk, scaling workloads) is the test's hook for that step, run before the step's commands; a check
after them sees their outputs. A step whose title lacks the keyword the test expects fails the test, so the doc
and the test cannot drift apart.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.tools import ROOT

PREFIX = ["kubectl", "device-localpv"]


@dataclass
class Step:
    number: int
    title: str
    commands: list[list[str]] = field(default_factory=list)  # plugin argv, after `kubectl device-localpv`


def read(name: str, doc: Path = ROOT / "docs" / "operations.md") -> list[Step]:
    text = doc.read_text()
    marker = f"<!-- runbook:{name} -->"
    assert marker in text, f"{doc} has no runbook {name}"
    block = text.split(marker, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    steps: list[Step] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        head = re.match(r"#\s*(\d+)\.\s*(.*)", line)
        if head:
            steps.append(Step(int(head.group(1)), head.group(2)))
            continue
        argv = shlex.split(line, comments=True)
        assert argv[:2] == PREFIX, f"runbook {name}: not a plugin command: {line}"
        assert steps, f"runbook {name}: command before the first step: {line}"
        steps[-1].commands.append(argv[2:])
    assert [s.number for s in steps] == list(range(1, len(steps) + 1)), "steps are not numbered 1..N"
    return steps


def fill(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    out = [values.get(a, a) for a in argv]
    left = [a for a in out if re.fullmatch(r"[A-Z][A-Z_]+", a)]
    assert not left, f"placeholders without a value: {left}"
    return out


Hook = Callable[[], None]
Check = Callable[[list[str]], None]


@dataclass
class Expect:
    keyword: str  # must appear in the step's title
    before: Hook | None = None  # what a person does by hand in this step
    after: Check | None = None  # given the outputs of the step's commands
    extra: Sequence[str] = ()  # arguments the test adds (e.g. --dry-run for a step it must not really do)


def follow(
    steps: Sequence[Step], expect: Mapping[int, Expect], values: Mapping[str, str], plugin: Callable[..., str]
) -> None:
    assert sorted(expect) == [s.number for s in steps], "the test does not cover exactly the doc's steps"
    for step in steps:
        want = expect[step.number]
        assert want.keyword.lower() in step.title.lower(), f"step {step.number} is now {step.title!r}"
        if want.before is not None:
            want.before()
        outputs = [plugin(*fill(argv, values), *want.extra) for argv in step.commands]
        if want.after is not None:
            want.after(outputs)


def claim_events(claim: str, namespace: str = "default") -> list[str]:
    """kubectl arguments that print the Events on a claim as JSON (for `reasons`)."""
    return ["get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={claim}", "-o", "json"]


def reasons(events_json: str) -> list[str]:
    """The reasons of a kubectl Event list, oldest first. lastTimestamp has whole seconds: two Events of one second
    are ordered by when they were last written (the store's resourceVersion), not by their random names."""
    items = json.loads(events_json)["items"]
    items.sort(key=lambda e: (e.get("lastTimestamp") or "", int(e["metadata"]["resourceVersion"])))
    return [e["reason"] for e in items]
