"""k8s/README.md's commands are ones that can run: each program is run by a test or listed as not runnable here,
every `sweeper` command is accepted by the CLI, and each names the sweep the shipped spec runs.

tests/cluster/test_manifest_e2e.py runs them (all but kubectl, helm and docker) after a sweep of that spec.
"""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from readme_commands import IN_POD, NOT_RUN_HERE, PODS, RUN_HERE, commands
from test_manifests import K8S, rendered, the
from typer.main import get_command

from sweeper.cli import app

COMMANDS = commands()


def sweep_name() -> str:
    return yaml.safe_load(the(rendered("base"), "ConfigMap")["data"]["sweep.yaml"])["name"]


def test_the_readme_has_commands_of_every_step():
    programs = {c.program for c in COMMANDS}
    assert {"kubectl", "sweeper", "curl", "wandb"} <= programs
    in_pod = [c.argv[:2] for c in COMMANDS if c.in_pod]
    for step in (["sweeper", "promote"], ["sweeper", "export"], ["sweeper", "trials"]):
        assert step in in_pod, f"no `kubectl exec ... -- {' '.join(step)}` in the README"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.line[:60])
def test_every_command_is_run_by_a_test_or_says_why_not(command):
    assert command.program in RUN_HERE | set(NOT_RUN_HERE), f"no test runs {command.program!r}: {command.line}"
    if command.in_pod:
        assert command.in_pod in PODS, f"`kubectl exec` into {command.in_pod!r}, a pod no test stands in for"
        assert command.argv[0] in IN_POD, f"no test runs {command.argv[0]!r} in a pod: {command.line}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.argv[:1] == ["sweeper"]], ids=lambda c: c.line[:60])
def test_every_sweeper_command_parses_and_names_the_shipped_sweep(command):
    cli = get_command(app)
    name, *args = command.argv[1:]
    sub = cli.get_command(None, name)
    assert sub is not None, f"`sweeper {name}` is no command"
    sub.make_context(f"sweeper {name}", list(args))  # missing or unknown arguments raise a usage error here
    positional = [a for a in args if not a.startswith("-")]
    if name in ("trials", "promote", "export"):
        assert positional[0] == sweep_name(), command.line
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0


def test_the_namespace_in_commands_is_the_dev_overlays():
    namespace = the(rendered("overlays/dev"), "Namespace")["metadata"]["name"]
    for command in COMMANDS:
        words = command.line.split()
        if "-n" in words:
            assert words[words.index("-n") + 1] == namespace, command.line
    assert (K8S / "overlays" / "dev").is_dir()
