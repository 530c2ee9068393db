"""The configuration the manifests give each service is configuration that service understands.

Every ``PROMPTCLIMB_<SERVICE>_*`` key of every rendered ConfigMap must name a field of that
service's settings class, and the settings must load from it: a renamed setting or a bad value
(a precision the scorer does not know, a dataset list that is not JSON) fails here, not in a pod.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO

OVERLAYS = sorted(p.name for p in (REPO / "deploy" / "k8s" / "overlays").iterdir() if p.is_dir())


def _settings_classes() -> dict[str, Any]:
    from services.coordinator.settings import CoordinatorSettings
    from services.optimizer.settings import OptimizerSettings
    from services.scorer.settings import ScorerSettings

    return {"SCORER": ScorerSettings, "OPTIMIZER": OptimizerSettings, "COORDINATOR": CoordinatorSettings}


def _rendered(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def _config_maps(overlay: str) -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: doc.get("data", {})
        for doc in _rendered(overlay)
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].split("-")[0] != "promptclimb"
    }


def _deployment_env(overlay: str) -> dict[str, dict[str, str]]:
    """Each Deployment's environment from its ConfigMaps, in envFrom order (a later one wins)."""
    config_maps = _config_maps(overlay)
    out = {}
    for doc in _rendered(overlay):
        if doc["kind"] == "Deployment":
            env: dict[str, str] = {}
            for source in doc["spec"]["template"]["spec"]["containers"][0].get("envFrom", []):
                if "configMapRef" in source:
                    env.update(config_maps[source["configMapRef"]["name"]])
            out[doc["metadata"]["name"]] = env
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_setting_in_the_manifests_exists_and_loads(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    classes = _settings_classes()
    config_maps = _config_maps(overlay)
    assert {name.split("-")[0].upper() for name in config_maps} == set(classes)
    for name, data in config_maps.items():
        service = name.split("-")[0].upper()
        settings_class = classes[service]
        prefix = f"PROMPTCLIMB_{service}_"
        keys = [k for k in data if k.startswith(prefix)]
        unknown = [k for k in keys if k.removeprefix(prefix).lower() not in settings_class.model_fields]
        assert not unknown, f"{overlay}/{name}: not settings of {settings_class.__name__}: {unknown}"
    for deployment, env in _deployment_env(overlay).items():
        service = deployment.split("-")[0].upper()
        for key in [k for k in os.environ if k.startswith("PROMPTCLIMB_")]:  # only the manifest's config
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = classes[service]()
        assert settings.host == "0.0.0.0", deployment  # reachable from the kubelet's probes and Prometheus
        assert settings.port == 50051
        assert settings.metrics_port == 9464


def test_the_coordinator_reaches_every_scorer_model_through_its_headless_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.coordinator.settings import CoordinatorSettings

    for overlay in OVERLAYS:
        namespace = yaml.safe_load(
            (REPO / "deploy" / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text()
        )["namespace"]
        envs = _deployment_env(overlay)
        for key in [k for k in os.environ if k.startswith("PROMPTCLIMB_")]:
            monkeypatch.delenv(key)
        for key, value in envs["coordinator"].items():
            monkeypatch.setenv(key, value)
        default, *models = CoordinatorSettings().scorer_entries()
        assert (
            default.id == ""
            and default.target == f"dns:///scorer-headless.{namespace}.svc.cluster.local:50051"
        )
        served = {}
        for deployment, env in envs.items():
            if deployment.startswith("scorer-"):
                served[env["PROMPTCLIMB_SCORER_MODEL_ID"]] = deployment
        assert {m.id for m in models} == set(served), overlay  # every model's scorer, and no other
        for m in models:
            assert m.target == f"dns:///{served[m.id]}-headless.{namespace}.svc.cluster.local:50051"
