"""tools/check_deploy.py passes on the repository, and each of its checks fails on a broken input."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import REPO, load_check_deploy, run_checks, tool_or_skip


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    tool_or_skip("promtool")
    tool_or_skip("hadolint")
    tool_or_skip("kubectl")
    tool_or_skip("kubernetes-validate")


def test_every_check_passes_on_the_repository() -> None:
    proc = run_checks(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = re.findall(r"^ok\s+(\S+)$", proc.stdout, flags=re.M)
    assert set(passed) == set(load_check_deploy().CHECKS)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _break_kustomize(root: Path) -> None:
    _edit(
        root / "deploy/k8s/overlays/gpu/kustomization.yaml", "path: scorer-gpu.yaml", "path: scorer-tpu.yaml"
    )


def _break_k8s_schema(root: Path) -> None:
    # A typo in a field name is silently dropped by a lenient apply; --strict must refuse it.
    _edit(
        root / "deploy/k8s/base/optimizer/deployment.yaml",
        "revisionHistoryLimit: 3",
        "revisionHistoryLimt: 3",
    )


def _break_crd_schema(root: Path) -> None:
    _edit(root / "deploy/monitoring/servicemonitors.yaml", "interval: 15s", "intervall: 15s")


def _break_pod_policy(root: Path) -> None:
    # Shorter than the 20 s server grace + 5 s preStop: in-flight scoring calls would be killed.
    _edit(
        root / "deploy/k8s/base/scorer/deployment.yaml",
        "terminationGracePeriodSeconds: 40",
        "terminationGracePeriodSeconds: 20",
    )


NEW_MODEL = "  - id: rn50-openai\n    model: local-dir:/models/rn50\n"


def _break_models(root: Path) -> None:
    # A model added to the list, the component not regenerated: the cluster would not serve it.
    with (root / "deploy/k8s/components/models/models.yaml").open("a") as f:
        f.write(NEW_MODEL)


def _break_rules_sync(root: Path) -> None:
    _edit(root / "deploy/monitoring/prometheusrule.yaml", "for: 2m", "for: 3m")


def _break_promtool_rules(root: Path) -> None:
    _edit(
        root / "deploy/monitoring/prometheusrule.yaml",
        'expr: up{job=~"promptclimb-(scorer|optimizer|coordinator)"} == 0',
        'expr: up{job=~"promptclimb-(scorer|optimizer|coordinator)"} == ',
    )


def _break_promtool_tests(root: Path) -> None:
    # The service-down alert now waits 10 minutes: its unit test (firing at 4 minutes) must fail.
    _edit(root / "deploy/monitoring/prometheusrule.yaml", "for: 2m", "for: 10m")


def _break_dashboard(root: Path) -> None:
    path = root / "deploy/monitoring/dashboards/promptclimb.json"
    dashboard = json.loads(path.read_text())
    panel = next(p for p in dashboard["panels"] if p.get("title") == "Scorer queue depth")
    panel["targets"][0]["expr"] = "sum by (instance (promptclimb_scorer_queue_depth)"
    path.write_text(json.dumps(dashboard))


def _break_hadolint(root: Path) -> None:
    (root / "deploy/docker/service.Dockerfile").write_text(
        "FROM python\nRUN apt-get update && apt-get install -y curl\nCMD promptclimb serve optimizer\n"
    )


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    # check name: (how to break its input, what the failure report must say)
    "kustomize": (_break_kustomize, "scorer-tpu.yaml"),
    "k8s-schema": (_break_k8s_schema, "revisionHistoryLimt"),
    "crd-schema": (_break_crd_schema, "intervall"),
    "pod-policy": (_break_pod_policy, "terminationGracePeriodSeconds 20 must exceed the server grace 20 s"),
    "models": (_break_models, "scorers.yaml is out of date with models.yaml"),
    "rules-sync": (_break_rules_sync, "out of date"),
    "promtool-rules": (_break_promtool_rules, "promtool check rules"),
    "promtool-tests": (_break_promtool_tests, "PromptclimbServiceDown"),
    "dashboard": (_break_dashboard, "Scorer queue depth"),
    "hadolint": (_break_hadolint, "DL3006"),
}


def test_every_check_has_a_broken_example() -> None:
    assert set(BROKEN) == set(load_check_deploy().CHECKS)


@pytest.mark.parametrize("check", sorted(BROKEN))
def test_check_fails_on_broken_input(check: str, deploy_copy: Path) -> None:
    break_input, expected = BROKEN[check]
    assert run_checks(deploy_copy, "--only", check).returncode == 0  # the copy is sound before
    break_input(deploy_copy)
    # promtool-tests runs on the extracted rules: refresh them so only the alert change matters.
    extra = ("--write",) if check == "promtool-tests" else ()
    proc = run_checks(deploy_copy, "--only", check, *extra)
    assert proc.returncode == 1
    assert f"FAIL {check}" in proc.stdout
    assert expected in proc.stdout, proc.stdout


def test_a_model_added_to_the_list_gets_its_scorer_and_a_place_in_the_coordinators_map(
    deploy_copy: Path,
) -> None:
    _break_models(deploy_copy)
    proc = run_checks(deploy_copy, "--write", "--only", "models", "--only", "pod-policy")
    assert proc.returncode == 0, proc.stdout
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(deploy_copy / "deploy/k8s/overlays/gpu")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    assert ("Deployment", "scorer-rn50-openai") in objects
    assert ("Service", "scorer-rn50-openai-headless") in objects
    coordinator_config = next(
        d for (k, n), d in objects.items() if k == "ConfigMap" and n.startswith("coordinator-")
    )
    assert (
        "rn50-openai=dns:///scorer-rn50-openai-headless.promptclimb.svc.cluster.local:50051"
        in coordinator_config["data"]["PROMPTCLIMB_COORDINATOR_SCORER"].split()
    )


def test_alert_without_a_unit_test_fails(deploy_copy: Path) -> None:
    _edit(
        deploy_copy / "deploy/monitoring/prometheusrule.yaml",
        "        - alert: PromptclimbServiceAbsent",
        "        - alert: PromptclimbUntested\n"
        "          expr: vector(1)\n"
        "        - alert: PromptclimbServiceAbsent",
    )
    proc = run_checks(deploy_copy, "--write", "--only", "promtool-tests")
    assert proc.returncode == 1
    assert "alert PromptclimbUntested has no promtool test in which it fires" in proc.stdout


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (job) (rate(grpc_server_handled_total{grpc_code!="OK"}[5m]))',
            {"grpc_server_handled_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(promptclimb_scorer_batch_size_bucket[$__interval])))",
            {"promptclimb_scorer_batch_size_bucket"},
        ),
        (
            "a_total / ignoring (outcome) group_left sum by (model) (rate(b_total[1m])) > 0 and on (job) up",
            {"a_total", "b_total", "up"},
        ),
        (
            'absent(up{job="x"}) or promptclimb:grpc_server_errors:ratio_rate5m',
            {"up", "promptclimb:grpc_server_errors:ratio_rate5m"},
        ),
    ],
)
def test_metric_names_are_extracted_from_promql(expr: str, names: set[str]) -> None:
    assert load_check_deploy().metric_names(expr) == names


def test_the_dashboard_check_reads_annotation_and_variable_queries(deploy_copy: Path) -> None:
    path = deploy_copy / "deploy/monitoring/dashboards/promptclimb.json"
    dashboard = json.loads(path.read_text())
    annotation = next(a for a in dashboard["annotations"]["list"] if a["name"] == "New best")
    annotation["expr"] = "max by (search_id (promptclimb_coordinator_search_best_accuracy)"
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "search")
    variable["query"]["query"] = "label_values(promptclimb_coordinator_search_iteration{job=}, search_id)"
    path.write_text(json.dumps(dashboard))
    proc = run_checks(deploy_copy, "--only", "dashboard")
    assert proc.returncode == 1
    assert "panel 'annotation New best'" in proc.stdout, proc.stdout
    assert "panel 'variable search'" in proc.stdout, proc.stdout
