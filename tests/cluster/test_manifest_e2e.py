"""The shipped manifests, run: each overlay rendered with kustomize, and what its RayJob would run on Kubernetes run
here, on a local multi-node Ray cluster shaped like the RayJob's, then k8s/README.md's commands after it.

Taken from the rendered objects, not restated here: the RayJob's entrypoint; the head's and the GPU workers'
environment (values, and Secret references resolved from a Secret made as the README makes it: the database URL of
the `postgres_url` fixture, an API token, no W&B key); their volume mounts (the PVC and the spec ConfigMap); the
head's `rayStartParams` (`num-cpus: "0"`) and the workers' container limits (CPUs, `nvidia.com/gpu`). Each Ray node
is started in its pod's environment, so trial workers see what a GPU pod would set.

Container paths onto this machine, in one place (`container_paths`): each PVC mount is a folder of this test
(the shared volume: every pod mounting the claim sees the same one), each ConfigMap mount a folder holding the
ConfigMap's files, and the image's /home/ray/app (the Dockerfile's WORKDIR, holding this checkout) is this checkout.
Paths are rewritten in the spec text, the entrypoint and environment values; the driver runs in a folder of its
own, standing in for the head container's working folder, which must stay empty.

What differs from the manifests, and why (2 CPU cores, no GPU, no Kubernetes):
- `SPEC_CUT`: the ConfigMap's spec, same task, model, search space, objective, storage, tracking and gates, with a
  budget of 2 trials (one at a time) instead of 16 (4 at once) and no time budget (whose cost probe alone takes
  ~40 s here), one epoch of one round, 8/2/2 rows of its restaurant8k splits (written beside the test, not under
  /home/ray/app), 2 generated holdout answers cut at 16 tokens (decoding whole ones was most of the promotion's
  time; whole answers are scored in tests/training), and 1 torch thread per trial.
- The entrypoint gets RAY_ADDRESS, as Ray's job submission sets it for a RayJob's entrypoint: on a machine shared
  with other Ray clusters, `--address auto` alone may pick another one.
- Worker nodes advertise the pod's `nvidia.com/gpu: 1` as `num_gpus=1`: Ray schedules `resources.gpus: 1` trials
  on them only (never on the CPU-only head) and sets CUDA_VISIBLE_DEVICES; CPU torch still trains on the CPU.
- One worker node stands for the GPU pods KubeRay's autoscaler would start (dev caps the group at 1, prod at 8;
  the autoscaler itself is not run; trials run one at a time here, so a second node would only idle). One local
  Ray cluster stands for both the RayJob's cluster and the long-lived RayCluster that the README's
  `kubectl exec "$HEAD"` commands reach: the test checks that both have the same head and worker shapes and
  environment.
- The entrypoint runs as a process on the "head" (KubeRay submits it as a Ray job).
- The volume already holds the bundled model converted to a plain checkpoint (what the first sweep on a volume
  leaves in SWEEPER_MODEL_CACHE): converting it takes ~20 s each time.
- The API (the Deployment's command and environment) runs in a working folder of its own, which is not checked.
- `kubectl` is not run: `kubectl exec POD -- CMD` runs CMD in that pod's stand-in environment, `kubectl cp POD:SRC
  DEST` copies the mapped SRC, `port-forward` is the API's local port.

The head is torn down mid-sweep (the driver killed, then every node of the cluster shut down), a fresh cluster is
started and the same entrypoint run again: the sweep resumes from PostgreSQL and the shared volume, and completes
with every trial once.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from helpers import ROOT, free_port, ray_tmp
from ray.cluster_utils import Cluster
from sqlalchemy.engine import make_url
from test_multinode import PASSWORD, query

sys.path.insert(0, str(ROOT / "tests" / "k8s"))
from kustomize_lite import render  # noqa: E402
from readme_commands import NOT_RUN_HERE, Command, commands  # noqa: E402

pytestmark = pytest.mark.slow
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
IMAGE_APP = "/home/ray/app"  # the Dockerfile's WORKDIR: `COPY . .` puts this checkout there
TOKEN = "e2e-token-5b0f3c9a1d7e4f62"
ROWS = {"train": 8, "holdout": 2, "test": 2}
SPEC_CUT = {  # what this test changes in the ConfigMap's spec (see the module docstring)
    "budget": {"trials": 2, "max_concurrent": 1},  # and no time_budget_s: its cost probe alone takes ~40 s here
    "fixed_num_epochs": 1,
    "evals_per_epoch": 1,
    "generation_eval_examples": 2,
    "max_new_tokens": 16,
    "torch_threads": 1,
}
WORKER_NODES = 1  # trials run one at a time (SPEC_CUT): one GPU pod holds them


# --- the rendered objects -------------------------------------------------------------------------

def rendered(overlay: str) -> list[dict]:
    """`kubectl kustomize` (installed here); kustomize_lite renders the same objects (tests/k8s checks that)."""
    if shutil.which("kubectl") is None:
        return render(K8S / "overlays" / overlay)
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@dataclass
class Pod:
    """What a pod runs with: its container's environment (Secret refs resolved later), mounts and Ray resources."""

    env: list[dict]
    mounts: list[dict]
    volumes: dict[str, dict]
    ray: dict  # num_cpus / num_gpus for the Ray node


def ray_pods(cluster: dict) -> tuple[Pod, Pod]:
    head_group, (gpu_group,) = cluster["headGroupSpec"], cluster["workerGroupSpecs"]
    head = _pod(head_group["template"]["spec"])
    head.ray = {"num_cpus": int(head_group["rayStartParams"]["num-cpus"]), "num_gpus": 0}
    worker = _pod(gpu_group["template"]["spec"])
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    worker.ray = {"num_cpus": int(limits["cpu"]), "num_gpus": int(limits["nvidia.com/gpu"])}  # as KubeRay derives
    return head, worker


def _pod(spec: dict) -> Pod:
    (container,) = spec["containers"]
    return Pod(container.get("env", []), container.get("volumeMounts", []), {v["name"]: v for v in spec["volumes"]},
               {})


def the(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def run_plan(docs: list[dict]) -> dict:
    """What the RayJob runs, as data: two overlays with the same plan run the same sweep."""
    job = the(docs, "RayJob")
    head, worker = ray_pods(job["spec"]["rayClusterSpec"])
    return {"entrypoint": job["spec"]["entrypoint"], "head": head.__dict__, "worker": worker.__dict__,
            "configmaps": {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}}


# --- the stand-in machine -------------------------------------------------------------------------

class Machine:
    """Container paths mapped onto folders of this test, and the environment each pod's processes get."""

    def __init__(self, tmp_path: Path, docs: list[dict], secret: dict[str, str]):
        self.tmp, self.docs, self.secret = tmp_path, docs, secret
        self.ray_address = ""  # the running cluster's: what Ray's job submission sets for the entrypoint
        self.paths = container_paths(tmp_path, docs)
        self.head_dir = tmp_path / "head-workdir"  # the driver's working folder: must stay empty
        self.api_dir = tmp_path / "api-workdir"  # the API container's working folder
        self.user_dir = tmp_path / "user"  # the README user's own machine (kubectl cp lands here)
        for folder in (self.head_dir, self.api_dir, self.user_dir):
            folder.mkdir()

    def local(self, text: str) -> str:
        for container, local in sorted(self.paths.items(), key=lambda item: -len(item[0])):
            text = re.sub(rf"{re.escape(container)}(?=/|\b|$)", str(local), text)
        return text

    def user_env(self) -> dict[str, str]:
        """The README user's own shell: sweeper installed, nothing of the cluster set."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEPER_", "WANDB_", "RAY_ADDRESS"))}
        return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def env(self, pod: Pod) -> dict[str, str]:
        """The process environment of `pod`'s container: the image's ENV, then the pod's (Secret refs resolved)."""
        env = {**self.user_env(), **image_env(), "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(ray_tmp(self.tmp)),
               "PYTHONUNBUFFERED": "1"}
        if self.ray_address:  # `--address auto` must find this cluster, not another Ray on a shared machine
            env["RAY_ADDRESS"] = self.ray_address
        for var in pod.env:
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                env[var["name"]] = self.local(var["value"])
            elif ref["key"] in self.secret:
                env[var["name"]] = self.secret[ref["key"]]
            else:
                assert ref.get("optional"), f"the Secret has no {ref['key']} and {var['name']} is not optional"
        return env


def container_paths(tmp_path: Path, docs: list[dict]) -> dict[str, Path]:
    """Every container path the pods mount, and the image's app folder, mapped to a folder on this machine."""
    paths = {IMAGE_APP: ROOT}
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for doc in docs:
        if doc["kind"] not in ("RayJob", "RayCluster", "Deployment"):
            continue
        for pod in pods_of(doc):
            for mount in pod.mounts:
                volume = pod.volumes[mount["name"]]
                if "persistentVolumeClaim" in volume:
                    local = tmp_path / "volumes" / volume["persistentVolumeClaim"]["claimName"]
                else:
                    name = volume["configMap"]["name"]
                    local = tmp_path / "configmaps" / name
                    local.mkdir(parents=True, exist_ok=True)
                    for key, text in config_maps[name]["data"].items():
                        (local / key).write_text(text)
                local.mkdir(parents=True, exist_ok=True)
                assert paths.setdefault(mount["mountPath"], local) == local, f"{mount['mountPath']} mounts two things"
    return paths


def pods_of(doc: dict) -> list[Pod]:
    if doc["kind"] == "Deployment":
        return [_pod(doc["spec"]["template"]["spec"])]
    return list(ray_pods(doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]))


def image_env() -> dict[str, str]:
    """The Dockerfile's `ENV NAME=value` lines: every process in the image has them."""
    lines = re.findall(r"^ENV\s+(\w+)=(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return dict(lines)


def cut_spec(machine: Machine, spec_file: Path) -> str:
    """The mounted spec with its container paths mapped and SPEC_CUT applied; returns the sweep's name."""
    spec = yaml.safe_load(machine.local(spec_file.read_text()))
    data = machine.tmp / "data"
    data.mkdir()
    for split, rows in ROWS.items():
        source = Path(spec["data"][split])
        assert source.is_relative_to(ROOT), f"data.{split} is not in the image: {source}"
        (data / source.name).write_text(json.dumps(json.loads(source.read_text())[:rows]))
        spec["data"][split] = str(data / source.name)
    spec["budget"].update(SPEC_CUT["budget"])
    del spec["budget"]["time_budget_s"]
    spec["scheduler"]["evals_per_epoch"] = SPEC_CUT["evals_per_epoch"]
    spec["search_space"]["params"].pop("num_epochs")
    spec["fixed"]["num_epochs"] = SPEC_CUT["fixed_num_epochs"]
    spec["generation_eval_examples"] = SPEC_CUT["generation_eval_examples"]
    spec["max_new_tokens"] = SPEC_CUT["max_new_tokens"]
    spec["resources"]["torch_threads"] = SPEC_CUT["torch_threads"]
    spec_file.chmod(0o644)
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    spec_file.chmod(0o444)  # the ConfigMap is mounted read-only
    return spec["name"]


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ is `env` while a Ray node starts: its processes (the trial workers too) inherit it, as a pod's do."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_cluster(machine: Machine, head: Pod, worker: Pod) -> tuple[Cluster, set[str], str]:
    machine.ray_address = ""
    with environment(machine.env(head)):
        cluster = Cluster(initialize_head=True, head_node_args=head.ray)
    with environment(machine.env(worker)):
        workers = [cluster.add_node(**worker.ray) for _ in range(WORKER_NODES)]
    cluster.wait_for_nodes()
    machine.ray_address = cluster.address
    return cluster, {node.node_id for node in workers}, cluster.head_node.node_id


def start_entrypoint(machine: Machine, entrypoint: str, head: Pod) -> subprocess.Popen:
    log = open(machine.tmp / f"driver-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(shlex.split(machine.local(entrypoint)), cwd=machine.head_dir, env=machine.env(head),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def logs(machine: Machine) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(machine.tmp.glob("driver-*.log")))


# --- the README's commands ---------------------------------------------------------------------------

def readme_run(machine: Machine, command: Command, pods: dict[str, Pod], shell: dict[str, str],
               api_port: int) -> subprocess.CompletedProcess | None:
    """Run one README command as its user would get it run (None: only `kubectl` itself, not run here)."""
    if command.program == "kubectl" and not command.in_pod:
        copy = command.argv[command.argv.index("cp") + 1:] if "cp" in command.argv else []
        if copy and ":" in copy[0]:  # kubectl cp POD:SRC DEST
            shutil.copytree(machine.local(copy[0].split(":", 1)[1]), machine.user_dir / copy[1])
        return None
    argv = [_expand(word, shell, api_port) for word in command.argv]
    if command.in_pod:
        env = machine.env(pods[command.in_pod])
        cwd = machine.api_dir if command.in_pod.startswith("deploy/") else machine.head_dir
        argv = [machine.local(word) for word in argv]
    else:
        env, cwd = machine.user_env(), machine.user_dir
        argv = [match for word in argv for match in (sorted(map(str, cwd.glob(word))) if "*" in word else [word])]
    for name, value in command.env.items():  # a Secret key's placeholder stands for the Secret's value
        env[name] = machine.secret.get(name, value)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _expand(word: str, shell: dict[str, str], api_port: int) -> str:
    for name, value in shell.items():
        word = word.replace(f"${name}", value)
    return word.replace("localhost:8000", f"127.0.0.1:{api_port}")  # `port-forward svc/sweeper-api 8000:80`


def start_api(machine: Machine, docs: list[dict], port: int) -> subprocess.Popen:
    """The Deployment's container command in its environment, on a free local port."""
    (container,) = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    argv = [machine.local(word) for word in container["command"]]
    argv[argv.index("--port") + 1], argv[argv.index("--host") + 1] = str(port), "127.0.0.1"
    log = open(machine.tmp / "api.log", "w")
    api = subprocess.Popen(argv, cwd=machine.api_dir, env=machine.env(pods_of(the(docs, "Deployment"))[0]),
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return api
        except OSError:
            assert api.poll() is None, (machine.tmp / "api.log").read_text()
            assert time.monotonic() < deadline, "the API never listened"
            time.sleep(0.3)


# --- the test ----------------------------------------------------------------------------------------

def test_the_rayjob_of_each_overlay_runs_resumes_after_its_head_dies_and_the_readme_gets_a_winner(
        tmp_path, postgres_url, ray_cleanup):
    plans = {overlay: run_plan(rendered(overlay)) for overlay in OVERLAYS}
    assert len({json.dumps(plan, sort_keys=True) for plan in plans.values()}) == 1, \
        "the overlays now run different sweeps: run each plan here"
    docs = rendered(OVERLAYS[0])
    job_head, job_worker = ray_pods(the(docs, "RayJob")["spec"]["rayClusterSpec"])
    cluster_head, cluster_worker = ray_pods(the(docs, "RayCluster")["spec"])
    assert (job_head, job_worker) == (cluster_head, cluster_worker), \
        "the RayJob's and the RayCluster's pods differ: one local cluster no longer stands for both"
    # Trust auth ignores the password, so the URL can carry one that must never be printed or written.
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    machine = Machine(tmp_path, docs, {"SWEEPER_DATABASE_URL": url, "SWEEPER_API_TOKENS": TOKEN})
    volume = machine.paths["/mnt/sweeper"]
    (ray_tmp(tmp_path) / "ray").mkdir(exist_ok=True)
    entrypoint = the(docs, "RayJob")["spec"]["entrypoint"]
    spec_path = shlex.split(machine.local(entrypoint))[2]
    name = cut_spec(machine, Path(spec_path))
    seed_model(Path(machine.env(job_head)["SWEEPER_MODEL_CACHE"]))

    # 1. The RayJob's cluster and entrypoint; the head is torn down once a trial has finished.
    started = time.monotonic()
    cluster, workers, head_node = start_cluster(machine, job_head, job_worker)
    driver = start_entrypoint(machine, entrypoint, job_head)
    try:
        deadline = time.monotonic() + 400
        while not query(postgres_url, "select id from sweeper_trials where status = 'completed'"):
            assert driver.poll() is None, f"the driver ended before a trial finished\n{logs(machine)}"
            assert time.monotonic() < deadline, f"no trial finished\n{logs(machine)}"
            time.sleep(0.5)
    finally:
        stop(driver)
        cluster.shutdown()
    before = {key for key, _, _ in trials_of(postgres_url)}
    assert (volume / "tune" / name).is_dir(), "Tune's state is not on the shared volume"
    assert list((volume / "state" / "sweeps" / name / "wandb-runs").rglob("offline-run-*")), "no W&B run on the volume"

    print(f"first head: {time.monotonic() - started:.0f} s")

    # 2. A new head, the same entrypoint: the sweep resumes and completes.
    started = time.monotonic()
    cluster, more_workers, second_head = start_cluster(machine, job_head, job_worker)
    workers |= more_workers
    try:
        driver = start_entrypoint(machine, entrypoint, job_head)
        code = driver.wait(timeout=400)
        assert code == 0, logs(machine)
        check_sweep(postgres_url, name, before, workers, {head_node, second_head}, volume)
        print(f"second head, resumed to the end: {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        in_pods = {"$HEAD": cluster_head, "deploy/sweeper-api": pods_of(the(docs, "Deployment"))[0]}
        check_readme(machine, docs, name, in_pods, workers, volume)
        print(f"the README's commands: {time.monotonic() - started:.0f} s")
    finally:
        stop(driver)
        cluster.shutdown()
    assert [str(p) for p in machine.head_dir.rglob("*")] == [], "the driver wrote into the head's working folder"
    assert not list(tmp_path.rglob("*.db")), "a SQLite store was written: the Secret's database was not used"
    for path in tmp_path.rglob("*"):
        if path.is_file() and "models" not in path.parts and path.stat().st_size < 5 << 20:
            assert PASSWORD.encode() not in path.read_bytes(), f"the database password leaked into {path}"


def seed_model(cache: Path) -> None:
    """The volume's model cache holds the bundled model as a converted checkpoint (linked from this machine's)."""
    from trainers.models import resolve_model

    converted = Path(resolve_model("smollm2-135m"))  # this machine's own cache, converted once
    cache.mkdir(parents=True, exist_ok=True)
    (cache / converted.name).symlink_to(converted, target_is_directory=True)


def trials_of(url: str) -> list[tuple]:
    return query(url, "select trial_key, node, status from sweeper_trials")


def check_sweep(url: str, name: str, before: set[str], workers: set[str], heads: set[str], volume: Path) -> None:
    """Every trial once, on a worker; the store says completed; Tune's state, W&B runs and the export on the volume."""
    trials = trials_of(url)
    keys = [key for key, _, _ in trials]
    assert len(keys) == len(set(keys)) == SPEC_CUT["budget"]["trials"], trials
    assert before <= set(keys), "a trial of the first head was lost"
    study = query(url, "select t.state, count(*) from trials t join studies s using (study_id) "
                       f"where s.study_name = '{name}' group by t.state")
    assert dict(study) == {"COMPLETE": SPEC_CUT["budget"]["trials"]}, study
    twice = query(url, "select trial_id, round from sweeper_rounds group by trial_id, round having count(*) > 1")
    assert twice == [], f"rounds recorded twice: {twice}"
    nodes = {node for _, node, _ in trials}
    assert nodes <= workers and not nodes & heads, f"a trial ran off the GPU workers: {trials}"
    (status, experiment), = query(url, f"select status, experiment_path from sweeper_sweeps where name = '{name}'")
    assert status == "completed"
    assert Path(experiment).is_relative_to(volume / "tune"), experiment
    sweep_dir = volume / "state" / "sweeps" / name
    runs = list((sweep_dir / "wandb-runs").rglob("offline-run-*"))
    assert len(runs) >= SPEC_CUT["budget"]["trials"], runs
    assert (sweep_dir / "export" / "winner.yaml").is_file() and (sweep_dir / "export" / "adapter").is_dir()


def check_readme(machine: Machine, docs: list[dict], name: str, pods: dict[str, Pod], workers: set[str],
                 volume: Path) -> None:
    """Every README command but kubectl itself, in order, after the sweep: a winner exported and promoted."""
    api_port = free_port()
    api = start_api(machine, docs, api_port)
    shell = {"TOKEN": TOKEN}
    ran = {}
    try:
        for command in commands():
            if command.program in set(NOT_RUN_HERE) - {"kubectl"}:
                continue
            began = time.monotonic()
            result = readme_run(machine, command, pods, shell, api_port)
            if result is None:
                continue
            print(f"{time.monotonic() - began:5.1f} s  {command.line}")
            ran[command.line] = result
            expected = (0, 3) if command.argv[:2] == ["sweeper", "promote"] else (0,)
            assert result.returncode in expected, f"{command.line}\n{result.stdout}\n{result.stderr}"
    finally:
        stop(api)
    assert name in " ".join(next(r.stdout for line, r in ran.items() if "sweeper status" in line).split())
    promotion = yaml.safe_load((volume / "state" / "sweeps" / name / "export" / "winner.yaml").read_text())["promotion"]
    assert promotion["status"] in ("PROMOTED", "NOT PROMOTED")
    assert_promotion_ran_on_workers(promotion, workers)
    (recorded,) = query(machine.secret["SWEEPER_DATABASE_URL"], "select export_path from sweeper_promotions")
    assert Path(recorded[0]).is_relative_to(volume), recorded
    exported = yaml.safe_load((machine.user_dir / "winner" / "winner.yaml").read_text())  # kubectl cp of the export
    assert exported["promotion"]["status"] == promotion["status"]
    assert (volume / "exports" / name / "winner.yaml").is_file()
    synced = next(r for line, r in ran.items() if line.startswith("wandb sync"))
    assert len(re.findall(r"offline-run-", synced.stdout + synced.stderr)) >= SPEC_CUT["budget"]["trials"]
    sweep = json.loads(next(r.stdout for line, r in ran.items() if "/sweeps/" in line and "Bearer" in line))
    assert sweep["name"] == name and sweep["status"] == "completed", sweep


def assert_promotion_ran_on_workers(promotion: dict, workers: set[str]) -> None:
    """Promotion's re-evaluation ran as a Ray task on a GPU worker, not in the process on the head."""
    steps = promotion.get("workers")
    assert steps, f"the promotion record does not say where its steps ran: {sorted(promotion)}"
    assert {step["node"] for step in steps} <= workers, steps
