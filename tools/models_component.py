"""The per-model scorer component, generated from the one list of models.

``deploy/k8s/components/models/models.yaml`` is the only place a model is written. From it this
module generates, next to it:

- ``scorers.yaml``: per model a scorer Deployment, its ClusterIP Service (scraped as
  ``job="promptclimb-scorer"``; the metrics carry the ``model`` label), a headless Service for the
  coordinator's round_robin channel, a PodDisruptionBudget and a NetworkPolicy — each derived from
  the base scorer's own manifests, so the pod policy stays the base's;
- ``kustomization.yaml``: a kustomize Component holding those objects, a ConfigMap per model
  (``PROMPTCLIMB_SCORER_MODEL``, ``_MODEL_ID``, ``_PRETRAINED``) and the coordinator's scorer map
  (``PROMPTCLIMB_COORDINATOR_SCORER``: the base scorer as the default model, then ``ID=TARGET`` per
  model).

``tools/check_deploy.py --write`` regenerates both; ``tools/check_deploy.py`` fails when they are
out of date or when a rendered overlay using the component disagrees with the list.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.coordinator.settings import MODEL_ID, parse_scorer_entries

HEADER = "# Generated from models.yaml by tools/check_deploy.py --write; do not edit.\n"
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?")  # the part of an object name a model gives
PORT = 50051


@dataclass(frozen=True)
class Model:
    """One entry of models.yaml."""

    id: str  # the scorer's --model-id and the coordinator's model id
    name: str  # object names: scorer-<name>
    model: str  # open_clip model: local-dir:/models/... (pods never download weights)
    pretrained: str = ""
    replicas: int = 1

    @property
    def deployment(self) -> str:
        return f"scorer-{self.name}"


def load_models(models_file: Path) -> tuple[str, list[Model]]:
    """(namespace, models) from models.yaml; ValueError naming what is wrong."""
    doc = yaml.safe_load(models_file.read_text()) or {}
    namespace = doc.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"{models_file}: 'namespace' (of the coordinator's Service names) is required")
    models = []
    for i, entry in enumerate(doc.get("models") or []):
        model_id = str(entry.get("id", ""))
        name = str(entry.get("name") or model_id.replace(".", "-").replace("_", "-"))
        if not MODEL_ID.fullmatch(model_id):
            raise ValueError(f"{models_file}: models[{i}].id {model_id!r} must match {MODEL_ID.pattern}")
        if not NAME.fullmatch(name):
            raise ValueError(f"{models_file}: models[{i}].name {name!r} must match {NAME.pattern}")
        if not entry.get("model"):
            raise ValueError(
                f"{models_file}: models[{i}].model is required (e.g. local-dir:/models/vit-b-16)"
            )
        models.append(
            Model(
                model_id,
                name,
                str(entry["model"]),
                str(entry.get("pretrained") or ""),
                int(entry.get("replicas", 1)),
            )
        )
    if not models:
        raise ValueError(f"{models_file}: list at least one model")
    for attr in ("id", "name"):
        values = [getattr(m, attr) for m in models]
        if len(values) != len(set(values)):
            raise ValueError(f"{models_file}: a model {attr} is listed twice")
    return namespace, models


def headless_target(name: str, namespace: str) -> str:
    """The coordinator's target for the scorer pods behind headless Service ``name``."""
    return f"dns:///{name}.{namespace}.svc.cluster.local:{PORT}"


def scorer_map(namespace: str, models: list[Model]) -> str:
    """PROMPTCLIMB_COORDINATOR_SCORER: the base scorer (the default model), then ID=TARGET each."""
    entries = [headless_target("scorer-headless", namespace)]
    entries += [f"{m.id}={headless_target(m.deployment + '-headless', namespace)}" for m in models]
    return " ".join(entries)


def _relabel(obj: dict[str, Any], m: Model, *, selector_paths: list[list[str]]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    meta = out["metadata"]
    meta["name"] = meta["name"].replace("scorer", m.deployment, 1)
    meta.setdefault("labels", {}).update(
        {"app.kubernetes.io/name": m.deployment, "promptclimb.io/model": m.id}
    )
    for path in selector_paths:
        node = out
        for key in path:
            node = node[key]
        node["app.kubernetes.io/name"] = m.deployment
    return out


def component_files(models_dir: Path, base_scorer: Path) -> dict[str, str]:
    """The generated files of the component: file name -> text."""
    namespace, models = load_models(models_dir / "models.yaml")

    def base(name: str) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all((base_scorer / name).read_text()) if d]

    (deployment,) = base("deployment.yaml")
    services = base("service.yaml")
    (pdb,) = base("pdb.yaml")
    (policy,) = base("networkpolicy.yaml")
    objects: list[dict[str, Any]] = []
    for m in models:
        d = _relabel(
            deployment,
            m,
            selector_paths=[["spec", "selector", "matchLabels"], ["spec", "template", "metadata", "labels"]],
        )
        d["spec"]["replicas"] = m.replicas
        d["spec"]["template"]["metadata"]["labels"]["promptclimb.io/model"] = m.id
        (container,) = d["spec"]["template"]["spec"]["containers"]
        container["envFrom"].append({"configMapRef": {"name": f"{m.deployment}-config"}})
        objects.append(d)
        for service in services:
            s = _relabel(service, m, selector_paths=[["spec", "selector"]])
            if service["spec"].get("clusterIP") != "None":
                # Scraped by the scorer ServiceMonitor (it selects Services named scorer), as job
                # promptclimb-scorer; the pods' metrics carry model=<id>.
                s["metadata"]["labels"]["app.kubernetes.io/name"] = "scorer"
            objects.append(s)
        objects.append(_relabel(pdb, m, selector_paths=[["spec", "selector", "matchLabels"]]))
        objects.append(_relabel(policy, m, selector_paths=[["spec", "podSelector", "matchLabels"]]))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": ["scorers.yaml"],
        "configMapGenerator": [
            {
                "name": f"{m.deployment}-config",
                "literals": [
                    f"PROMPTCLIMB_SCORER_MODEL={m.model}",
                    f"PROMPTCLIMB_SCORER_MODEL_ID={m.id}",
                    *([f"PROMPTCLIMB_SCORER_PRETRAINED={m.pretrained}"] if m.pretrained else []),
                ],
            }
            for m in models
        ]
        + [
            {
                "name": "coordinator-config",
                "behavior": "merge",
                "literals": [f"PROMPTCLIMB_COORDINATOR_SCORER={scorer_map(namespace, models)}"],
            }
        ],
    }
    return {
        "scorers.yaml": HEADER + yaml.safe_dump_all(objects, sort_keys=False, width=1000),
        "kustomization.yaml": HEADER + yaml.safe_dump(kustomization, sort_keys=False, width=1000),
    }


def write_component(models_dir: Path, base_scorer: Path) -> None:
    """Regenerate the component's files."""
    for name, text in component_files(models_dir, base_scorer).items():
        (models_dir / name).write_text(text)


def stale_files(models_dir: Path, base_scorer: Path) -> list[str]:
    """The generated files that differ from what models.yaml and the base scorer give."""
    return [
        name
        for name, text in component_files(models_dir, base_scorer).items()
        if not (models_dir / name).exists() or (models_dir / name).read_text() != text
    ]


def rendered_problems(
    objects: list[dict[str, Any]], envs: dict[str, dict[str, str]], models_dir: Path
) -> list[str]:
    """What a rendered overlay using the component must hold for every listed model.

    ``envs``: each Deployment's environment as its container gets it (check_deploy resolves it).
    """
    namespace, models = load_models(models_dir / "models.yaml")
    by_kind: dict[tuple[str, str], dict[str, Any]] = {
        (o["kind"], o["metadata"]["name"]): o for o in objects if "metadata" in o
    }
    if "coordinator" not in envs:
        return ["no coordinator Deployment"]
    scorer_map = envs["coordinator"].get("PROMPTCLIMB_COORDINATOR_SCORER", "")
    try:
        entries = {e.id: e.target for e in parse_scorer_entries(scorer_map.split())}
    except ValueError as exc:
        return [f"the coordinator's scorer map {scorer_map!r}: {exc}"]
    base_service = by_kind.get(("Service", "scorer-headless"))
    base_selector = base_service["spec"]["selector"] if base_service is not None else None
    problems = []
    for m in models:
        d = by_kind.get(("Deployment", m.deployment))
        if d is None:
            problems.append(f"model {m.id}: no Deployment {m.deployment}")
            continue
        env = envs[m.deployment]
        if env.get("PROMPTCLIMB_SCORER_MODEL_ID") != m.id or env.get("PROMPTCLIMB_SCORER_MODEL") != m.model:
            problems.append(f"model {m.id}: Deployment {m.deployment} does not serve it (env {env})")
        pods = d["spec"]["template"]["metadata"]["labels"]
        headless = by_kind.get(("Service", f"{m.deployment}-headless"))
        if headless is None or any(pods.get(k) != v for k, v in headless["spec"]["selector"].items()):
            problems.append(f"model {m.id}: no headless Service selecting its pods")
        if entries.get(m.id) != headless_target(f"{m.deployment}-headless", namespace):
            problems.append(f"model {m.id}: the coordinator's scorer map has {entries.get(m.id)!r}")
        if base_selector is not None and all(pods.get(k) == v for k, v in base_selector.items()):
            problems.append(f"model {m.id}: the default scorer's Service also selects its pods")
    return problems
