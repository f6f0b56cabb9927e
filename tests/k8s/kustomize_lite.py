"""A minimal offline kustomize: just the fields k8s/ uses, so overlays are checked without kubectl.

Supported: `resources` (files and kustomization folders), `patches` (inline or `path`; JSON 6902
with a `target`, or a strategic-merge `$patch: delete`), `namespace`, `images`, `replicas`.
Anything else raises, naming the field, rather than being silently ignored. Every reference is
checked: a missing file, a patch that matches no object, or a JSON-patch path that does not exist
raises `KustomizeError`. When kubectl is installed the tests also compare with `kubectl kustomize`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "metadata", "resources", "patches", "namespace", "images", "replicas"}
SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition"}


class KustomizeError(Exception):
    pass


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize directory` would print (same transformers, same order)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise KustomizeError(f"{directory}: {sorted(unsupported)} not supported by {Path(__file__).name}")
    docs = []
    for ref in kustomization.get("resources", []):
        path = directory / ref
        if path.is_dir():
            docs += render(path)
        elif path.is_file():
            docs += load_docs(path)
        else:
            raise KustomizeError(f"{directory}: resource {ref!r} does not exist")
    for patch in kustomization.get("patches", []):
        docs = apply_patch(docs, patch, directory)
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        set_image(docs, image)
    for replicas in kustomization.get("replicas", []):
        targets = [d for d in matching(docs, {"name": replicas["name"]}) if d["kind"] in SCALABLE]
        if not targets:
            raise KustomizeError(f"{directory}: replicas for missing object {replicas['name']!r}")
        for target in targets:
            target["spec"]["replicas"] = replicas["count"]
    return docs


def matching(docs: list[dict], target: dict) -> list[dict]:
    def matches(doc):
        group, _, version = doc["apiVersion"].rpartition("/")
        actual = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}
        return all(actual[key] == value for key, value in target.items())

    return [doc for doc in docs if matches(doc)]


def apply_patch(docs: list[dict], patch: dict, directory: Path) -> list[dict]:
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    body = yaml.safe_load(text)
    if isinstance(body, list):  # JSON 6902: applies to every object the target selects
        targets = matching(docs, patch["target"])
        if not targets:
            raise KustomizeError(f"{directory}: patch target {patch['target']} matches no object")
        return [json_patch(doc, body) if any(doc is t for t in targets) else doc for doc in docs]
    if body.pop("$patch", None) != "delete" or "target" in patch:
        raise KustomizeError(f"{directory}: only `$patch: delete` strategic-merge patches are supported")
    doomed = matching(docs, {"kind": body["kind"], "name": body["metadata"]["name"]})
    if not doomed:
        raise KustomizeError(f"{directory}: delete patch for missing {body['kind']} {body['metadata']['name']}")
    return [doc for doc in docs if not any(doc is d for d in doomed)]


def json_patch(doc: dict, operations: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in operations:
        parent, key = locate(doc, op)
        if op["op"] == "add" and isinstance(parent, list):
            parent.insert(key, op["value"])
        elif op["op"] in ("add", "replace"):
            parent[key] = op["value"]
        elif op["op"] == "remove":
            del parent[key]
        elif op["op"] == "test" and parent[key] != op["value"]:
            raise KustomizeError(f"{doc['kind']}: test failed at {op['path']}: {parent[key]!r} != {op['value']!r}")
        elif op["op"] != "test":
            raise KustomizeError(f"unsupported JSON-patch op {op['op']!r}")
    return doc


def locate(doc: dict, op: dict) -> tuple:
    """(container, key) that `op` addresses; only `add` may name a key that does not exist yet."""
    keys = [k.replace("~1", "/").replace("~0", "~") for k in op["path"].split("/")[1:]]
    try:
        parent = doc
        for key in keys[:-1]:
            parent = parent[int(key) if isinstance(parent, list) else key]
        key = keys[-1]
        if isinstance(parent, list):
            key = len(parent) if key == "-" else int(key)
            exists, addable = 0 <= key < len(parent), 0 <= key <= len(parent)
        elif isinstance(parent, dict):
            exists, addable = key in parent, True
        else:  # a scalar has no children
            exists = addable = False
    except (KeyError, IndexError, ValueError, TypeError):
        exists = addable = False
    if not (exists or (op["op"] == "add" and addable)):
        raise KustomizeError(f"{doc['kind']} {doc['metadata']['name']}: no path {op['path']}")
    return parent, key


def set_image(docs: list[dict], image: dict) -> None:
    """Like kustomize: rewrite `image` in every containers / initContainers list, at any depth."""

    def visit(node):
        if isinstance(node, list):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers"):
                    for container in value:
                        container["image"] = retag(container["image"], image)
                visit(value)

    visit(docs)


def retag(current: str, image: dict) -> str:
    name, tag = split_image(current)
    if name != image["name"]:
        return current
    return f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def split_image(image: str) -> tuple[str, str]:
    """('registry/repo', 'tag'); a registry port (host:5000/repo) is not a tag."""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return name, tag
