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


def _config_maps(overlay: str) -> dict[str, dict[str, str]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {
        doc["metadata"]["name"]: doc.get("data", {})
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"].split("-")[0] != "promptclimb"
    }


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
        for key in [k for k in os.environ if k.startswith("PROMPTCLIMB_")]:  # only the manifest's config
            monkeypatch.delenv(key)
        for key, value in data.items():
            monkeypatch.setenv(key, value)
        settings = settings_class()
        assert settings.host == "0.0.0.0"  # reachable from the kubelet's probes and from Prometheus
        assert settings.port == 50051
        assert settings.metrics_port == 9464


def test_the_coordinator_reaches_every_scorer_through_the_headless_service() -> None:
    for overlay in OVERLAYS:
        config = next(d for n, d in _config_maps(overlay).items() if n.startswith("coordinator-"))
        namespace = yaml.safe_load(
            (REPO / "deploy" / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text()
        )["namespace"]
        assert config["PROMPTCLIMB_COORDINATOR_SCORER"] == (
            f"dns:///scorer-headless.{namespace}.svc.cluster.local:50051"
        )
