#!/usr/bin/env python
"""Static checks of everything under ``deploy/``: manifests, monitoring rules, dashboard, Dockerfiles.

    tools/check_deploy.py                 # every check; exit status 1 when any fails
    tools/check_deploy.py --only dashboard --only hadolint
    tools/check_deploy.py --write         # refresh the generated files: the plain rules file extracted
                                          # from the PrometheusRule, the per-model scorer component
    tools/check_deploy.py --root /tmp/copy   # check another tree laid out like this repository

Checks: every kustomization renders with ``kubectl kustomize``; the rendered core objects pass
``kubernetes-validate --strict``; ServiceMonitor/PrometheusRule objects match the CRD schemas in
``deploy/monitoring/schemas``; every Deployment meets the project's pod policy (restricted
security context, native gRPC probes, termination grace longer than the server's); the plain rules
file is in sync with the PrometheusRule; the per-model scorer component
(``deploy/k8s/components/models``) is generated from its models.yaml and every overlay using it
serves each model behind its own headless Service, named in the coordinator's scorer map;
``promtool check rules``/``check config``/``test rules`` pass and every alert has a unit test;
every dashboard query parses (``promtool check rules``); ``hadolint`` passes the Dockerfiles.
``promtool`` is looked up on PATH, then in ``.cache/prometheus`` (``tools/install_prometheus.sh``
puts it there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:  # tools/ is not a package: models_component imports the same way
    sys.path.insert(0, str(TOOLS))  # when this file runs as a script and when a test loads it by path
KUBERNETES_VERSION = "1.32.0"  # oldest release we support: native gRPC probes GA, preStop sleep on
RULES_HEADER = (
    "# Generated from deploy/monitoring/prometheusrule.yaml by tools/check_deploy.py --write; do not edit.\n"
)
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.schema.json",
}
# Grafana's built-in variables, replaced by plain durations so promtool can parse the query.
GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


@dataclass
class Layout:
    """Where the deploy artefacts live under a repository root."""

    root: Path

    @property
    def deploy(self) -> Path:
        return self.root / "deploy"

    @property
    def overlays(self) -> list[Path]:
        return sorted(
            p for p in (self.deploy / "k8s" / "overlays").iterdir() if (p / "kustomization.yaml").exists()
        )

    @property
    def kustomizations(self) -> list[Path]:
        """Everything that must render: the base, each overlay, the monitoring bundle."""
        return [self.deploy / "k8s" / "base", *self.overlays, self.deploy / "monitoring"]

    @property
    def models_component(self) -> Path:
        return self.deploy / "k8s" / "components" / "models"

    @property
    def base_scorer(self) -> Path:
        return self.deploy / "k8s" / "base" / "scorer"

    @property
    def prometheus_rule(self) -> Path:
        return self.deploy / "monitoring" / "prometheusrule.yaml"

    @property
    def plain_rules(self) -> Path:
        return self.deploy / "monitoring" / "prometheus" / "promptclimb.rules.yml"

    @property
    def prometheus_config(self) -> Path:
        return self.deploy / "monitoring" / "prometheus" / "prometheus.yml"

    @property
    def rule_tests(self) -> list[Path]:
        return sorted((self.deploy / "monitoring" / "tests").glob("*.yml"))

    @property
    def dashboards(self) -> list[Path]:
        return sorted((self.deploy / "monitoring" / "dashboards").glob("*.json"))

    @property
    def dockerfiles(self) -> list[Path]:
        return sorted((self.deploy / "docker").glob("*Dockerfile"))


# --- helpers shared with the tests ---------------------------------------------------------------


class _LiteralDumper(yaml.SafeDumper):
    """Dumps multi-line strings (PromQL) as YAML literal blocks, the way people write rules."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def plain_rules_text(prometheus_rule: Path) -> str:
    """The PrometheusRule's ``spec`` as a plain Prometheus rules file."""
    spec = yaml.safe_load(prometheus_rule.read_text())["spec"]
    return RULES_HEADER + yaml.dump(spec, Dumper=_LiteralDumper, sort_keys=False, width=1000)


def rules_of(plain_rules: Path) -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of a plain rules file."""
    groups = yaml.safe_load(plain_rules.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries(dashboard: Path) -> list[tuple[str, str]]:
    """(where, PromQL) of every query of a Grafana dashboard.

    ``where`` is the panel title for a panel's targets (rows included), ``annotation NAME`` for an
    annotation query, ``variable NAME`` for a query variable: the selector of its
    ``label_values(SELECTOR, label)`` or the expression of its ``query_result(EXPR)``.
    """

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    board = json.loads(dashboard.read_text())
    found = []
    for panel in panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((panel.get("title", ""), target["expr"]))
    for annotation in board.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            found.append((f"annotation {annotation.get('name', '')}", annotation["expr"]))
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = str(query.get("query", "") if isinstance(query, dict) else query or "").strip()
        selector = re.fullmatch(r"label_values\((.+),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", text, flags=re.S)
        result = re.fullmatch(r"query_result\((.+)\)", text, flags=re.S)
        expr = selector.group(1) if selector else result.group(1) if result else text
        if expr and not re.fullmatch(r"label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", expr):
            found.append((f"variable {variable.get('name', '')}", expr))
    return found


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana variables by values promtool accepts (durations, a match-anything regex)."""
    for variable, duration in GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, duration)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".+", expr)


_PROMQL_KEYWORDS = set(
    "and or unless bool offset by without on ignoring group_left group_right inf nan atan2".split()
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (recording-rule names included).

    A light tokenizer, enough for our rules and dashboard: strings, label matchers, ranges and
    grouping clauses are cut out, then every identifier that is not a function call or keyword
    is a metric name.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:]|\s*\()", text):
        name = match.group(1)
        if name.lower() not in _PROMQL_KEYWORDS:
            names.add(name)
    return names


# --- the checks ----------------------------------------------------------------------------------


@dataclass
class Context:
    """What the checks share: the layout, the tools, rendered manifests (cached)."""

    layout: Layout
    kubernetes_version: str = KUBERNETES_VERSION
    _rendered: dict[Path, list[dict[str, Any]]] = field(default_factory=dict)
    _render_errors: dict[Path, str] = field(default_factory=dict)

    def render(self, kustomization: Path) -> list[dict[str, Any]]:
        """``kubectl kustomize`` output as objects; raises RuntimeError with kubectl's message."""
        if kustomization not in self._rendered and kustomization not in self._render_errors:
            proc = subprocess.run(
                ["kubectl", "kustomize", str(kustomization)], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                self._render_errors[kustomization] = proc.stderr.strip() or proc.stdout.strip()
            else:
                self._rendered[kustomization] = [d for d in yaml.safe_load_all(proc.stdout) if d]
        if kustomization in self._render_errors:
            raise RuntimeError(
                f"{self.rel(kustomization)}: kubectl kustomize failed: {self._render_errors[kustomization]}"
            )
        return self._rendered[kustomization]

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.layout.root))
        except ValueError:
            return str(path)


def find_tool(name: str, root: Path) -> str:
    """A tool on PATH, next to this Python, or in the repo's .cache/prometheus; else an error."""
    candidates = [shutil.which(name), str(Path(sys.executable).parent / name)]
    candidates.append(str(root / ".cache" / "prometheus" / "usr" / "bin" / name))
    candidates.append(
        str(Path(__file__).resolve().parent.parent / ".cache" / "prometheus" / "usr" / "bin" / name)
    )
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return candidate
    hint = " (run tools/install_prometheus.sh)" if name in ("promtool", "prometheus") else ""
    raise FileNotFoundError(f"{name} not found{hint}")


def run_tool(args: list[str], cwd: Path | None = None) -> tuple[int, str]:
    proc = subprocess.run(args, capture_output=True, text=True, cwd=cwd, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_kustomize(ctx: Context) -> list[str]:
    """Every kustomization renders."""
    problems = []
    for kustomization in ctx.layout.kustomizations:
        try:
            objects = ctx.render(kustomization)
        except RuntimeError as exc:
            problems.append(str(exc))
            continue
        if not objects:
            problems.append(f"{ctx.rel(kustomization)}: renders no objects")
    return problems


def check_k8s_schema(ctx: Context) -> list[str]:
    """kubernetes-validate --strict on every rendered core object of each overlay."""
    validator = find_tool("kubernetes-validate", ctx.layout.root)
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for overlay in ctx.layout.overlays:
            core = [o for o in ctx.render(overlay) if (o.get("apiVersion"), o.get("kind")) not in CRD_SCHEMAS]
            rendered = Path(tmp) / f"{overlay.name}.yaml"
            rendered.write_text(yaml.safe_dump_all(core, sort_keys=False))
            code, output = run_tool(
                [
                    validator,
                    "--strict",
                    "--quiet",
                    "--kubernetes-version",
                    ctx.kubernetes_version,
                    str(rendered),
                ]
            )
            if code != 0:
                problems.append(f"{ctx.rel(overlay)}: kubernetes-validate --strict failed:\n{output}")
    return problems


def check_crd_schema(ctx: Context) -> list[str]:
    """ServiceMonitor/PrometheusRule objects against deploy/monitoring/schemas."""
    schema_dir = ctx.layout.deploy / "monitoring" / "schemas"
    problems = []
    seen = 0
    for kustomization in ctx.layout.kustomizations:
        for obj in ctx.render(kustomization):
            key = (obj.get("apiVersion"), obj.get("kind"))
            if key not in CRD_SCHEMAS:
                group = str(key[0]).rpartition("/")[0]
                if "." in group and not group.endswith(".k8s.io"):  # a CRD we have no schema for
                    problems.append(
                        f"{ctx.rel(kustomization)}: no schema for custom resource {key[1]} ({key[0]})"
                    )
                continue
            seen += 1
            schema = json.loads((schema_dir / CRD_SCHEMAS[key]).read_text())
            validator = jsonschema.Draft202012Validator(schema)
            for error in sorted(validator.iter_errors(obj), key=str):
                where = "/".join(str(p) for p in error.absolute_path) or "(object)"
                name = obj.get("metadata", {}).get("name")
                problems.append(f"{ctx.rel(kustomization)}: {key[1]} {name}: {where}: {error.message}")
    if seen == 0:
        problems.append("no ServiceMonitor or PrometheusRule rendered anywhere")
    return problems


def _config_maps(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o.get("data", {}) for o in objects if o.get("kind") == "ConfigMap"}


def _container_env(container: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps.get(source["configMapRef"]["name"], {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def deployment_problems(deployment: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> list[str]:
    """The project's pod policy for one Deployment (restricted security, gRPC probes, grace)."""
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    problems = []
    pod_security = pod.get("securityContext", {})
    if pod_security.get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot must be true")
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod securityContext.seccompProfile.type must be RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken must be false (the services never call the API server)")
    grace_period = pod.get("terminationGracePeriodSeconds", 30)
    for container in pod.get("containers", []):
        cname = f"container {container['name']}"
        security = container.get("securityContext", {})
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cname}: allowPrivilegeEscalation must be false")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            problems.append(f"{cname}: capabilities.drop must contain ALL")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cname}: readOnlyRootFilesystem must be true")
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        if "/tmp" not in mounts:
            problems.append(f"{cname}: a read-only root needs a writable /tmp volume")
        image = container.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append(f"{cname}: image {image!r} needs a pinned tag")
        if not container.get("resources", {}).get("requests"):
            problems.append(f"{cname}: resource requests are missing")
        # Probes: native gRPC; startup and readiness on the service's own health name, liveness on "".
        service_names = set()
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(probe_name)
            if not probe or "grpc" not in probe:
                problems.append(f"{cname}: {probe_name} must be a native grpc probe")
                continue
            service = probe["grpc"].get("service", "")
            if probe_name == "livenessProbe":
                if service != "":
                    problems.append(f'{cname}: livenessProbe must check the overall health name ""')
            elif not re.fullmatch(r"promptclimb\.api\.v1\.[A-Za-z]+Service", service):
                problems.append(
                    f"{cname}: {probe_name} must check the per-service health name, got {service!r}"
                )
            else:
                service_names.add(service)
        if len(service_names) > 1:
            problems.append(
                f"{cname}: startup and readiness probes check different services {sorted(service_names)}"
            )
        # Termination: preStop sleep + server grace must fit in terminationGracePeriodSeconds.
        env = _container_env(container, config_maps)
        graces = [float(v) for k, v in env.items() if re.fullmatch(r"PROMPTCLIMB_[A-Z]+_GRACE_SECONDS", k)]
        if not graces:
            problems.append(f"{cname}: no PROMPTCLIMB_*_GRACE_SECONDS in its configuration")
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        for grace in graces:
            if grace_period <= grace + pre_stop:
                problems.append(
                    f"{cname}: terminationGracePeriodSeconds {grace_period} must exceed the server grace "
                    f"{grace:g} s plus the preStop sleep {pre_stop} s"
                )
    return [f"Deployment {name}: {p}" for p in problems]


def check_pod_policy(ctx: Context) -> list[str]:
    """Every Deployment of every overlay meets the pod policy."""
    problems = []
    for overlay in ctx.layout.overlays:
        objects = ctx.render(overlay)
        config_maps = _config_maps(objects)
        deployments = [o for o in objects if o.get("kind") == "Deployment"]
        if not deployments:
            problems.append(f"{ctx.rel(overlay)}: no Deployment rendered")
        for deployment in deployments:
            problems += [f"{ctx.rel(overlay)}: {p}" for p in deployment_problems(deployment, config_maps)]
    return problems


def check_models(ctx: Context) -> list[str]:
    """The per-model component is generated from models.yaml, and overlays using it serve every model."""
    from models_component import rendered_problems, stale_files

    layout = ctx.layout
    try:
        stale = stale_files(layout.models_component, layout.base_scorer)
    except (ValueError, OSError) as exc:
        return [str(exc)]
    problems = [
        f"{ctx.rel(layout.models_component / name)} is out of date with models.yaml or the base scorer: "
        "run tools/check_deploy.py --write"
        for name in stale
    ]
    users = [
        o
        for o in layout.overlays
        if "components/models"
        in str(yaml.safe_load((o / "kustomization.yaml").read_text()).get("components"))
    ]
    if not users:
        problems.append("no overlay uses deploy/k8s/components/models")
    for overlay in users:
        objects = ctx.render(overlay)
        config_maps = _config_maps(objects)
        envs = {
            o["metadata"]["name"]: _container_env(o["spec"]["template"]["spec"]["containers"][0], config_maps)
            for o in objects
            if o.get("kind") == "Deployment"
        }
        problems += [
            f"{ctx.rel(overlay)}: {p}" for p in rendered_problems(objects, envs, layout.models_component)
        ]
    return problems


def check_rules_sync(ctx: Context) -> list[str]:
    """The plain rules file equals the PrometheusRule's spec (``--write`` refreshes it)."""
    expected = plain_rules_text(ctx.layout.prometheus_rule)
    target = ctx.layout.plain_rules
    if not target.exists() or target.read_text() != expected:
        return [
            f"{ctx.rel(target)} is out of date with {ctx.rel(ctx.layout.prometheus_rule)}: "
            "run tools/check_deploy.py --write"
        ]
    return []


def check_promtool_rules(ctx: Context) -> list[str]:
    """promtool check rules on the plain rules file, check config on prometheus.yml."""
    promtool = find_tool("promtool", ctx.layout.root)
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        # Check what the PrometheusRule says now, even when the extracted file is stale.
        rules = Path(tmp) / "promptclimb.rules.yml"
        rules.write_text(plain_rules_text(ctx.layout.prometheus_rule))
        code, output = run_tool([promtool, "check", "rules", str(rules)])
        if code != 0:
            problems.append(f"promtool check rules {ctx.rel(ctx.layout.prometheus_rule)}:\n{output}")
    code, output = run_tool([promtool, "check", "config", str(ctx.layout.prometheus_config)])
    if code != 0:
        problems.append(f"promtool check config {ctx.rel(ctx.layout.prometheus_config)}:\n{output}")
    return problems


def check_promtool_tests(ctx: Context) -> list[str]:
    """promtool test rules passes, and every alert has a unit test where it fires."""
    promtool = find_tool("promtool", ctx.layout.root)
    problems = []
    tests = ctx.layout.rule_tests
    if not tests:
        return ["no promtool unit tests under deploy/monitoring/tests"]
    code, output = run_tool([promtool, "test", "rules", *[str(t) for t in tests]])
    if code != 0:
        problems.append(f"promtool test rules:\n{output}")
    tested = set()
    for test_file in tests:
        for case in yaml.safe_load(test_file.read_text()).get("tests", []):
            for alert_test in case.get("alert_rule_test", []):
                if alert_test.get("exp_alerts"):
                    tested.add(alert_test["alertname"])
    spec = yaml.safe_load(ctx.layout.prometheus_rule.read_text())["spec"]
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r}
    for alert in sorted(alerts - tested):
        problems.append(f"alert {alert} has no promtool test in which it fires")
    return problems


def check_dashboard(ctx: Context) -> list[str]:
    """Every dashboard query parses as PromQL (as recording rules, through promtool)."""
    promtool = find_tool("promtool", ctx.layout.root)
    problems = []
    if not ctx.layout.dashboards:
        return ["no dashboard under deploy/monitoring/dashboards"]
    for dashboard in ctx.layout.dashboards:
        try:
            queries = dashboard_queries(dashboard)
        except json.JSONDecodeError as exc:
            problems.append(f"{ctx.rel(dashboard)}: not JSON: {exc}")
            continue
        if not queries:
            problems.append(f"{ctx.rel(dashboard)}: no queries")
            continue
        # One rules file per query: promtool then names the exact query that fails.
        with tempfile.TemporaryDirectory() as tmp:
            for i, (title, expr) in enumerate(queries):
                rules = {
                    "groups": [
                        {
                            "name": "dashboard",
                            "rules": [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}],
                        }
                    ]
                }
                path = Path(tmp) / f"query_{i}.yml"
                path.write_text(yaml.safe_dump(rules))
                code, output = run_tool([promtool, "check", "rules", str(path)])
                if code != 0:
                    problems.append(f"{ctx.rel(dashboard)}: panel {title!r}: query {expr!r}:\n{output}")
    return problems


def check_hadolint(ctx: Context) -> list[str]:
    """hadolint passes every Dockerfile."""
    hadolint = find_tool("hadolint", ctx.layout.root)
    if not ctx.layout.dockerfiles:
        return ["no Dockerfile under deploy/docker"]
    code, output = run_tool([hadolint, *[str(p) for p in ctx.layout.dockerfiles]])
    return [f"hadolint:\n{output}"] if code != 0 else []


CHECKS: dict[str, Callable[[Context], list[str]]] = {
    "kustomize": check_kustomize,
    "k8s-schema": check_k8s_schema,
    "crd-schema": check_crd_schema,
    "pod-policy": check_pod_policy,
    "models": check_models,
    "rules-sync": check_rules_sync,
    "promtool-rules": check_promtool_rules,
    "promtool-tests": check_promtool_tests,
    "dashboard": check_dashboard,
    "hadolint": check_hadolint,
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen checks; print one line per check and the problems; 1 when any failed."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="repository root holding deploy/ (default: this repository)",
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(CHECKS), help="run only this check (repeatable)"
    )
    parser.add_argument("--write", action="store_true", help="regenerate the plain rules file, then check")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    ctx = Context(Layout(args.root.resolve()), kubernetes_version=args.kubernetes_version)
    if args.write:
        from models_component import write_component

        ctx.layout.plain_rules.write_text(plain_rules_text(ctx.layout.prometheus_rule))
        write_component(ctx.layout.models_component, ctx.layout.base_scorer)
    failed = []
    for name in args.only or list(CHECKS):
        try:
            problems = CHECKS[name](ctx)
        except (RuntimeError, FileNotFoundError) as exc:
            problems = [str(exc)]
        print(f"{'ok  ' if not problems else 'FAIL'} {name}", flush=True)
        for problem in problems:
            print("     " + problem.replace("\n", "\n     "), flush=True)
        if problems:
            failed.append(name)
    if failed:
        print(f"check_deploy: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
