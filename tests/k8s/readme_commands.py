"""The shell commands k8s/README.md tells a user to type, as data, so tests can run them.

Commands are read from its fenced bash blocks: continuation lines joined, comments dropped. A `kubectl exec ... --
CMD` line also yields CMD, which runs in a pod (tests run it in that pod's stand-in); leading `NAME=value` words
are environment settings for the command.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "k8s" / "README.md"
FENCE = re.compile(r"^```(?:bash|sh)\n(.*?)^```", re.MULTILINE | re.DOTALL)
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
# Where each program's commands are exercised; the README may use no other program.
RUN_HERE = {"sweeper", "wandb", "curl"}  # run by tests/cluster/test_manifest_e2e.py after its sweep
IN_POD = {"sweeper", "mkdir"}  # what `kubectl exec` runs; run by the same test in the pod's stand-in
PODS = {"$HEAD", "deploy/sweeper-api"}  # the pods `kubectl exec` reaches (the RayCluster head, the API)
NOT_RUN_HERE = {  # README commands no test runs: they need a Kubernetes cluster or a Docker daemon, or are the suite
    "kubectl": "talks to a Kubernetes cluster (its `exec` commands are run, in the pod's stand-in)",
    "helm": "installs the KubeRay operator into a Kubernetes cluster",
    "docker": "builds and pushes the image (no Docker daemon here; tests/k8s checks the Dockerfile's pins)",
    ".venv/bin/pytest": "the test suite itself",
}


@dataclass(frozen=True)
class Command:
    line: str  # as the README writes it (continuations joined)
    program: str  # what the user's shell runs: kubectl, helm, sweeper, ...
    argv: list[str]  # what runs where it runs: inside the pod for `kubectl exec ... -- CMD`
    env: dict[str, str] = field(default_factory=dict)  # `NAME=value` words before the program
    in_pod: str = ""  # the pod (as the README names it) a `kubectl exec` runs argv in; '' on the user's machine


def commands(readme: Path = README) -> list[Command]:
    found = []
    for block in FENCE.findall(readme.read_text()):
        for line in _lines(block):
            found.append(_command(line))
    return found


def _lines(block: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _command(line: str) -> Command:
    substitution = re.match(r"^[A-Za-z_]\w*=\$\((\S+)", line)  # HEAD=$(kubectl ...): the program is kubectl
    if substitution:
        return Command(line, substitution[1], [])
    words = shlex.split(line, comments=True)
    env = {}
    while words and (assignment := ASSIGNMENT.match(words[0])):
        env[assignment[1]] = assignment[2]
        words.pop(0)
    program, argv, pod = words[0], words, ""
    if program == "kubectl" and "exec" in words and "--" in words:
        argv = words[words.index("--") + 1:]
        pod = words[words.index("--") - 1]
    return Command(line, program, argv, env, pod)
