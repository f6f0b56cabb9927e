"""Every spec the repository ships passes `sweeper validate`: the examples, the one the k8s RayJob runs, and the
spec reference in README.md.

The RayJob's spec names paths in the image (/home/ray/app is this checkout, copied by the Dockerfile), so it is
validated with that prefix pointed at this checkout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLES, ROOT
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.spec import load_spec

IMAGE_APP = "/home/ray/app"


def validate(path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, " ".join(result.output.split())


@pytest.mark.parametrize("spec", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_validates(spec):
    validate(spec)


def test_the_rayjob_spec_validates_and_tunes_a_causal_lm_on_gpus(tmp_path):
    config_map = yaml.safe_load((ROOT / "k8s" / "base" / "configmap-spec.yaml").read_text())
    text = config_map["data"]["sweep.yaml"]
    assert IMAGE_APP in text  # its data is the image's copy of examples/data
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(text.replace(IMAGE_APP, str(ROOT)))
    validate(spec_file)
    spec = load_spec(spec_file)
    assert spec.task == "causal_lm_sft" and spec.resources.gpus >= 1
    assert spec.storage.root.startswith("/mnt/sweeper/")  # the shared volume the manifests mount


def test_the_readmes_spec_reference_validates(tmp_path):
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## The spec\n\n```yaml\n") + len("## The spec\n\n```yaml\n")
    spec_file = EXAMPLES / f".readme-spec-{tmp_path.name}.yaml"  # beside the examples: its paths are relative
    spec_file.write_text(readme[start:readme.index("```", start)])
    try:
        validate(spec_file)
    finally:
        spec_file.unlink()
