"""The Kubernetes manifests in k8s/ are valid, consistent with each other and with the code, offline.

Core kinds are checked with kubernetes-validate (strict: a misspelt field fails), KubeRay kinds with
the CRD schemas (crd_schema.py), overlays rendered with kustomize_lite.py (and `kubectl kustomize`
when installed), plus the rules only the KubeRay controller enforces, which no schema catches.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from crd_schema import RAY_KINDS, schema_errors
from kustomize_lite import KustomizeError, load_docs, render, split_image

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
TARGETS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
KUBERNETES_VERSION = "1.30"
IMAGE = "ghcr.io/sweeper-ml/sweeper:0.1.0-ray2.60.0-gpu"
# Environment variables the sweeper code reads (the names agreed for its settings in sweeper/).
DATABASE_URL, WANDB_KEY, API_TOKENS = "SWEEPER_DATABASE_URL", "WANDB_API_KEY", "SWEEPER_API_TOKENS"
STORAGE_PATH, RAY_ADDRESS = "SWEEPER_STORAGE_PATH", "SWEEPER_RAY_ADDRESS"
API_ENV = {DATABASE_URL, WANDB_KEY, API_TOKENS, STORAGE_PATH, RAY_ADDRESS}
# Every SWEEPER_* variable the code names: a manifest setting any other one has a typo, or names a dead setting.
CODE_ENV = {WANDB_KEY} | {name for folder in ("sweeper", "trainers") for path in (ROOT / folder).rglob("*.py")
                          for name in re.findall(r"SWEEPER_[A-Z_]+", path.read_text())}
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
NAME_LIMITS = {"RayJob": 47, "RayService": 47, "RayCluster": 53}  # KubeRay derives longer names


# --- helpers ---------------------------------------------------------------------------------

def rendered(target: str) -> list[dict]:
    return render(K8S / target)


def the(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def ray_pod_specs(doc: dict) -> dict[str, dict]:
    """{'head': pod spec, '<worker group>': pod spec} of a RayJob / RayCluster."""
    spec = cluster_spec(doc)
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])})
    return pods


def containers(doc: dict) -> list[dict]:
    if doc["kind"] in ("RayJob", "RayCluster"):
        pods = list(ray_pod_specs(doc).values())
    elif doc["kind"] == "Deployment":
        pods = [doc["spec"]["template"]["spec"]]
    else:
        return []
    return [c for pod in pods for c in pod.get("initContainers", []) + pod["containers"]]


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def validation_errors(doc: dict) -> list[str]:
    """Schema errors of any object: core kinds by kubernetes-validate, KubeRay kinds by their CRD."""
    if doc["kind"] in RAY_KINDS:
        return schema_errors(doc)
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []


def controller_errors(doc: dict) -> list[str]:
    """Rules the KubeRay controller (or the API server's name check) enforces beyond the schema."""
    name, errors = doc["metadata"]["name"], []
    limit = NAME_LIMITS.get(doc["kind"], 63)
    if not DNS_1035.fullmatch(name) or len(name) > limit:
        errors.append(f"{doc['kind']} name {name!r} is not a DNS-1035 label of at most {limit} chars")
    if doc["kind"] not in ("RayJob", "RayCluster"):
        return errors
    spec = doc["spec"]
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
        errors.append("ttlSecondsAfterFinished > 0 needs shutdownAfterJobFinishes: true")
    groups = [cluster_spec(doc)["headGroupSpec"], *cluster_spec(doc).get("workerGroupSpecs", [])]
    for group in groups:
        for key, value in group.get("rayStartParams", {}).items():
            if not isinstance(value, str):
                errors.append(f"rayStartParams {key}: {value!r} must be a string")
    for group in groups[1:]:
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        if not low <= group.get("replicas", low) <= high:
            errors.append(f"worker group {group['groupName']}: needs minReplicas <= replicas <= maxReplicas")
    ray_version = cluster_spec(doc).get("rayVersion")
    for container in containers(doc):
        if image_ray_version(container["image"]) != ray_version:
            errors.append(f"image {container['image']} does not carry rayVersion {ray_version!r}")
    return errors


def image_ray_version(image: str) -> str | None:
    """'2.60.0' from 'rayproject/ray:2.60.0-py311-gpu' or from '...sweeper:0.1.0-ray2.60.0-gpu'."""
    name, tag = split_image(image)
    found = re.match(r"(\d+\.\d+\.\d+)", tag) if name.endswith("rayproject/ray") else None
    found = found or re.search(r"ray(\d+\.\d+\.\d+)", tag)
    return found.group(1) if found else None


def minimal_rayjob(**spec_changes) -> dict:
    """A small RayJob that KubeRay accepts; tests break one thing at a time."""
    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "minimal-sweep"},
        "spec": {
            "entrypoint": "sweeper run /specs/sweep.yaml --address auto",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 60,
            "rayClusterSpec": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0"},
                    "template": {"spec": {"containers": [{"name": "ray-head", "image": IMAGE}]}},
                },
                "workerGroupSpecs": [{
                    "groupName": "gpu",
                    "minReplicas": 0,
                    "maxReplicas": 2,
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [{
                        "name": "ray-worker",
                        "image": IMAGE,
                        "resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "4"}},
                    }]}},
                }],
            },
        },
    }
    job["spec"].update(spec_changes)
    return job


# --- every file, every object ----------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(K8S.rglob("*.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_yaml_file_parses_into_named_objects(path):
    docs = load_docs(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: a document without apiVersion/kind"
        assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without metadata.name"


def test_base_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("target", TARGETS)
def test_objects_pass_their_schemas(target):
    for doc in rendered(target):
        assert validation_errors(doc) == [], f"{target}: {doc['kind']} {doc['metadata']['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_objects_pass_controller_rules(target):
    for doc in rendered(target):
        assert controller_errors(doc) == [], f"{target}: {doc['kind']} {doc['metadata']['name']}"


# --- overlays --------------------------------------------------------------------------------

def test_overlays_exist():
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_sets_its_namespace_and_spares_the_real_secret(overlay):
    base, docs = rendered("base"), rendered(f"overlays/{overlay}")
    namespace = the(docs, "Namespace")["metadata"]["name"]
    assert all(d["metadata"].get("namespace") == namespace for d in docs if d["kind"] != "Namespace")
    # The real Secret is created out of band: applying an overlay must never overwrite it.
    assert "Secret" not in {d["kind"] for d in docs}
    assert {d["kind"] for d in base} - {"Secret"} <= {d["kind"] for d in docs}
    maxima = {d["kind"]: cluster_spec(d)["workerGroupSpecs"][0]["maxReplicas"] for d in docs
              if d["kind"] in ("RayJob", "RayCluster")}
    assert len(maxima) == 2 and len(set(maxima.values())) == 1, maxima


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("target", TARGETS)
def test_kubectl_kustomize_renders_the_same_objects(target):
    out = subprocess.run(["kubectl", "kustomize", str(K8S / target)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    key = lambda doc: (doc["kind"], doc["metadata"]["name"])  # noqa: E731
    assert sorted(yaml.safe_load_all(out), key=key) == sorted(rendered(target), key=key)


def test_renderer_refuses_broken_patches(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    kustomization = {"resources": [str(K8S / "base")], "patches": [{
        "target": {"kind": "RayJob", "name": "sweeper-sweep"},
        "patch": "- op: replace\n  path: /spec/rayClusterSpec/workerGroupSpecs/3/maxReplicas\n  value: 2\n",
    }]}
    write = lambda: (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))  # noqa: E731
    write()
    with pytest.raises(KustomizeError, match="no path"):
        render(overlay)
    kustomization["patches"][0]["target"]["name"] = "no-such-job"
    write()
    with pytest.raises(KustomizeError, match="matches no object"):
        render(overlay)
    kustomization["patches"] = []
    kustomization["resources"].append("missing.yaml")
    write()
    with pytest.raises(KustomizeError, match="does not exist"):
        render(overlay)


# --- consistency -----------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_one_image_everywhere(target):
    images = {c["image"] for doc in rendered(target) for c in containers(doc)}
    assert len(images) == 1, images
    if target == "base":
        assert images == {IMAGE}


def test_rayjob_runs_the_mounted_spec():
    docs = rendered("base")
    job = the(docs, "RayJob")
    program, command, spec_path, *options = job["spec"]["entrypoint"].split()
    assert (program, command, options) == ("sweeper", "run", ["--address", "auto"])
    head = ray_pod_specs(job)["head"]
    (mount,) = [m for m in head["containers"][0]["volumeMounts"] if spec_path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    config_map = the(docs, "ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"] == "sweeper-spec"
    assert Path(spec_path).name in config_map["data"]
    assert isinstance(yaml.safe_load(config_map["data"][Path(spec_path).name]), dict)


def test_rayjob_lifecycle_and_autoscaling():
    job = the(rendered("base"), "RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert cluster_spec(job)["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_trials_run_on_gpu_workers_only(kind):
    doc = the(rendered("base"), kind)
    assert cluster_spec(doc)["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    workers = {name: pod for name, pod in ray_pod_specs(doc).items() if name != "head"}
    assert workers
    for pod in workers.values():
        assert all(c["resources"]["limits"].get("nvidia.com/gpu") for c in pod["containers"])
        assert any(t["key"] == "nvidia.com/gpu" for t in pod.get("tolerations", []))


def test_secret_refs_exist_in_the_secret_template():
    docs = rendered("base")
    secret = the(docs, "Secret")
    assert set(secret["stringData"]) == {DATABASE_URL, WANDB_KEY, API_TOKENS}
    for container in (c for doc in docs for c in containers(doc)):
        for var in env(container).values():
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
                assert ref["key"] == var["name"]
                assert ref.get("optional", False) is (var["name"] == WANDB_KEY)  # only W&B is optional


def test_env_names_are_the_ones_the_code_reads():
    docs = rendered("base")
    for doc in docs:
        for container in containers(doc):
            names = set(env(container))
            ours = {n for n in names if n.startswith(("SWEEPER_", "WANDB_"))}
            assert ours <= CODE_ENV, f"{container['name']}: unknown {ours - CODE_ENV}"
            assert {DATABASE_URL, WANDB_KEY, STORAGE_PATH} <= names, container["name"]
    (api,) = containers(the(docs, "Deployment"))
    assert set(env(api)) >= API_ENV


def test_storage_path_is_shared_by_every_pod():
    docs = rendered("base")
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    pods = [pod for doc in docs if doc["kind"] in ("RayJob", "RayCluster") for pod in ray_pod_specs(doc).values()]
    pods.append(the(docs, "Deployment")["spec"]["template"]["spec"])
    for pod in pods:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            path = env(container)[STORAGE_PATH]["value"]
            if path.startswith(("s3://", "gs://")):
                continue
            (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
            claim = claims[volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]]
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_service_reaches_the_api_and_the_api_reaches_the_raycluster():
    docs = rendered("base")
    deployment, service, cluster = (the(docs, kind) for kind in ("Deployment", "Service", "RayCluster"))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (api,) = deployment["spec"]["template"]["spec"]["containers"]
    assert api["command"] == ["sweeper", "serve", "--host", "0.0.0.0", "--port", "8000"]
    port_names = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert port_names[service["spec"]["ports"][0]["targetPort"]] == 8000
    for probe in (api["readinessProbe"], api["livenessProbe"]):
        assert probe["httpGet"]["path"] == "/health" and probe["httpGet"]["port"] in ("http", 8000)
    assert api["resources"]["requests"] and api["resources"]["limits"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # KubeRay names the head Service <RayCluster name>-head-svc; 8265 is the dashboard, where Ray jobs are submitted.
    assert env(api)[RAY_ADDRESS]["value"] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    head = ray_pod_specs(cluster)["head"]["containers"][0]
    assert 8265 in {p["containerPort"] for p in head["ports"]}
    # What the service writes (specs, exports, logs) is on the volume the Ray head mounts at the same path.
    root = env(api)["SWEEPER_SERVICE_ROOT"]["value"]
    mounts = [m["mountPath"] for m in head.get("volumeMounts", [])]
    assert any(root.startswith(m + "/") for m in mounts) and any(root.startswith(m["mountPath"] + "/")
                                                                  for m in api["volumeMounts"])


# --- the validators catch mistakes (each must fail on a broken object) ----------------------

def test_known_good_rayjob_is_accepted():
    job = minimal_rayjob()
    assert schema_errors(job) == [] and controller_errors(job) == []


def test_defaulted_and_null_fields_are_accepted_as_the_api_server_does():
    job = minimal_rayjob(suspend=None)  # `suspend:` with no value in YAML
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    del group["minReplicas"], group["maxReplicas"]  # required by the CRD, but they have defaults
    assert schema_errors(job) == []


def test_misspelt_rayjob_field_is_rejected():
    job = minimal_rayjob()
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in schema_errors(job))


def test_integer_ray_start_param_is_rejected():
    job = minimal_rayjob()
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"] = {"num-cpus": 0}
    assert any("rayStartParams" in e for e in schema_errors(job))
    assert any("must be a string" in e for e in controller_errors(job))


def test_float_quantity_is_rejected():
    job = minimal_rayjob()
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resources"]["limits"]["cpu"] = 1.5  # must be quoted: "1.5"
    assert any("limits" in e for e in schema_errors(job))


def test_misspelt_deployment_container_field_is_rejected():
    deployment = copy.deepcopy(the(rendered("base"), "Deployment"))
    assert validation_errors(deployment) == []
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = "IfNotPresent"
    assert validation_errors(deployment) != []


@pytest.mark.parametrize("name", ["s" * 60, "Sweeper-Sweep", "1-sweep", "sweep_1"])
def test_bad_rayjob_name_is_rejected(name):
    job = minimal_rayjob()
    job["metadata"]["name"] = name
    assert any("DNS-1035" in e for e in controller_errors(job))


def test_ttl_without_shutdown_is_rejected():
    job = minimal_rayjob(shutdownAfterJobFinishes=False)
    assert any("ttlSecondsAfterFinished" in e for e in controller_errors(job))


def test_ray_version_that_differs_from_the_image_is_rejected():
    job = minimal_rayjob()
    job["spec"]["rayClusterSpec"]["rayVersion"] = "2.59.0"
    assert any("rayVersion" in e for e in controller_errors(job))


def test_replicas_outside_their_bounds_are_rejected():
    job = minimal_rayjob()
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 3  # maxReplicas is 2
    assert any("replicas" in e for e in controller_errors(job))


def test_image_tags_and_the_dockerfile_follow_the_versions_pyproject_pins():
    """One place for versions: pyproject.toml. Each overlay's tag is `<version>[-<overlay>]-ray<ray pin>-gpu`, and
    the Dockerfile builds on that Ray and installs that torch; a bump in pyproject.toml alone fails here."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(.+)", d).groups() for d in project["dependencies"]
                if "==" in d)  # name (extras dropped) -> pinned version
    version, ray, torch = project["version"], pins["ray"], pins["torch"]
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        (image,) = kustomization["images"]
        assert re.fullmatch(rf"{re.escape(version)}(-{overlay})?-ray{re.escape(ray)}-gpu", image["newTag"]), image
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray}-" in dockerfile
    assert f'ARG TORCH_SPEC="torch=={torch}"' in dockerfile
