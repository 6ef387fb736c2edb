"""One description of the fleet's dashboard panels and alarms, rendered for every target.

Why one description: the Grafana dashboard (EKS with kube-prometheus-stack), the CloudWatch dashboard and
alarms (EKS through the CloudWatch agent's Prometheus scraping) and the ECS template's dashboard show the
same panels from the same metric names; a name changes in one place and a test
(tests/observability/test_metric_names.py) scrapes the real tritonserver and control plane to prove
every name used here is exported. `fleet dashboards render` writes the files; `--check` fails when the
committed files differ from what this module generates.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from model_repository import contract

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "TritonFleet"  # the CloudWatch namespace the agents publish to (ECS's sidecar uses it already)
CONTROL_PLANE_JOB = "triton-fleet-control-plane"
TRITON_JOB = "triton"
CONTROL_PLANE_METRICS_PORT = 9102

# Every metric name the panels and alarms use, in one place (the lead adjusts names here after merges).
METRICS = {
    # Triton's own (per Triton model, i.e. per pack); the summary needs --metrics-config=summary_latencies=true
    "success": contract.TRITON_SUCCESS,
    "failure": "nv_inference_request_failure",
    "summary": "nv_inference_request_summary_us",
    "queue": "nv_inference_queue_duration_us",
    # the pack runtime's (triton/backends/pack/model.py), on Triton's metrics port
    "member_requests": contract.MEMBER_REQUESTS,
    "member_loads": "fleet_member_loads_total",
    "resident_members": "fleet_pack_resident_members",
    "pack_resident_bytes": "fleet_pack_resident_bytes",
    # the control plane's (control_plane/observability/metrics.py)
    "models": "fleet_models",
    "pending": "fleet_models_pending",
    "servers": "fleet_servers",
    "placements": "fleet_placements",
    "replicas": "fleet_pack_replicas",
    "placed": "fleet_server_placed_bytes",
    "capacity": "fleet_server_capacity_bytes",
    "tier_resident": "fleet_server_tier_resident_bytes",
    "tier_budget": "fleet_server_tier_budget_bytes",
    "tick": "fleet_reconcile_tick_seconds",
    "syncs": "fleet_syncs_total",
    "sync_seconds": "fleet_sync_seconds",
    "loads": "fleet_pack_loads_total",
    "load_seconds": "fleet_pack_load_seconds",
    "registrations": "fleet_registrations_total",
    "leader": "fleet_control_plane_leader",
    "registry_up": "fleet_registry_up",
    "loadtests": "fleet_loadtests",
}
M = METRICS
TRITON_PREFIXES = ("nv_", "fleet_member_", "fleet_pack_resident")


@dataclass(frozen=True)
class Cw:
    """One CloudWatch query: a metric the agent publishes, with the Prometheus labels kept as dimensions."""

    metric: str
    dims: tuple[str, ...] = ()
    stat: str = "Sum"
    where: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # Grafana unit id
    promql: tuple[tuple[str, str], ...]  # (legend, expression)
    cw: tuple[Cw, ...] = ()
    cw_math: str | None = None  # over m0, m1, ...: each a SUM() of its query across dimensions
    ecs: bool = False  # the ECS ad-filter fleet exports these (its sidecar scrapes Triton only)
    width: int = 12

    def metric_names(self) -> set[str]:
        names = {c.metric for c in self.cw}
        for _, expression in self.promql:
            names |= set(re.findall(r"\b(?:nv|fleet)_[a-z0-9_]+\b", expression))
        return names


@dataclass(frozen=True)
class Alarm:
    name: str
    description: str
    threshold_parameter: str
    default_threshold: float
    comparison: str
    periods: int
    datapoints: int
    metrics: tuple[Cw, ...]
    expression: str | None = None  # metric math over m0, m1, ...; None: alarm on metrics[0]
    missing: str = "notBreaching"
    extra_parameters: dict = field(default_factory=dict)


PANELS: tuple[Panel, ...] = (
    Panel("Inference requests, per Triton model", "reqps",
          ((("{{model}}"), f"sum by (model) (rate({M['success']}[1m]))"),),
          (Cw(M["success"], ("model",)),), ecs=True),
    Panel("p99 latency per Triton model (us, worst server)", "µs",
          (("{{model}}", f"max by (model) ({M['summary']}{{quantile=\"0.99\"}})"),),
          (Cw(M["summary"], ("model", "quantile"), "Maximum", (("quantile", "0.99"),)),), ecs=True),
    Panel("Failed requests, per Triton model", "reqps",
          (("{{model}}", f"sum by (model) (rate({M['failure']}[1m]))"),),
          (Cw(M["failure"], ("model",)),), ecs=True),
    Panel("Error rate (%)", "percent",
          (("errors", f"100 * sum(rate({M['failure']}[5m])) / clamp_min(sum(rate({M['success']}[5m])) + "
                      f"sum(rate({M['failure']}[5m])), 1e-9)"),),
          (Cw(M["success"], ("model",)), Cw(M["failure"], ("model",))),
          cw_math="IF(m0 + m1 > 0, 100 * m1 / (m0 + m1), 0)", ecs=True),
    Panel("Queue time per request (us)", "µs",
          (("{{model}}", f"sum by (model) (rate({M['queue']}[5m])) / clamp_min(sum by (model) "
                         f"(rate({M['success']}[5m])), 1e-9)"),),
          (Cw(M["queue"], ("model",)), Cw(M["success"], ("model",))), cw_math="IF(m1 > 0, m0 / m1, 0)"),
    Panel("Hottest models (requests, top 10)", "reqps",
          (("{{member}}", f"topk(10, sum by (member) (rate({M['member_requests']}[5m])))"),),
          (Cw(M["member_requests"], ("pack",)),)),
    Panel("Resident bytes per pack", "bytes",
          (("{{pack}}", f"sum by (pack) ({M['pack_resident_bytes']})"),),
          (Cw(M["pack_resident_bytes"], ("pack",), "Maximum"),)),
    Panel("Member loads (per second) and resident members", "short",
          (("loads/s", f"sum(rate({M['member_loads']}[5m]))"),
           ("resident members", f"sum({M['resident_members']})")),
          (Cw(M["member_loads"], ("pack",)), Cw(M["resident_members"], ("pack",), "Maximum"))),
    Panel("Models by status", "short",
          (("{{status}}", f"max by (status) ({M['models']})"),),
          (Cw(M["models"], ("status",), "Maximum"),)),
    Panel("Pending models by reason", "short",
          (("{{reason}}", f"max by (reason) ({M['pending']})"),),
          (Cw(M["pending"], ("reason",), "Maximum"),)),
    Panel("Servers by health", "short",
          (("{{health}}", f"max by (health) ({M['servers']})"),),
          (Cw(M["servers"], ("health",), "Maximum"),)),
    Panel("Placements by state", "short",
          (("{{state}}", f"max by (state) ({M['placements']})"),),
          (Cw(M["placements"], ("state",), "Maximum"),)),
    Panel("Replicas per pack", "short",
          (("{{pack}}", f"max by (pack) ({M['replicas']})"),),
          (Cw(M["replicas"], ("pack",), "Maximum"),)),
    Panel("Server fill (placed / capacity)", "percentunit",
          (("{{server}}", f"max by (server) ({M['placed']}) / clamp_min(max by (server) ({M['capacity']}), 1)"),),
          (Cw(M["placed"], ("server",), "Maximum"), Cw(M["capacity"], ("server",), "Maximum"))),
    Panel("Tiers per server (resident vs budget)", "bytes",
          (("{{server}} {{tier}} resident", f"max by (server, tier) ({M['tier_resident']})"),
           ("{{server}} {{tier}} budget", f"max by (server, tier) ({M['tier_budget']}) >= 0")),
          (Cw(M["tier_resident"], ("server", "tier"), "Maximum"), Cw(M["tier_budget"], ("server", "tier"), "Maximum"))),
    Panel("Reconcile tick duration (s)", "s",
          (("p99", f"histogram_quantile(0.99, sum by (le) (rate({M['tick']}_bucket[5m])))"),
           ("mean", f"sum(rate({M['tick']}_sum[5m])) / clamp_min(sum(rate({M['tick']}_count[5m])), 1e-9)")),
          (Cw(f"{M['tick']}_sum"), Cw(f"{M['tick']}_count")), cw_math="IF(m1 > 0, m0 / m1, 0)"),
    Panel("Syncs and pack loads", "short",
          (("sync {{outcome}}", f"sum by (outcome) (increase({M['syncs']}[1m]))"),
           ("{{action}} {{outcome}}", f"sum by (action, outcome) (increase({M['loads']}[1m]))")),
          (Cw(M["syncs"], ("outcome",)), Cw(M["loads"], ("action", "outcome")))),
    Panel("Sync and pack load duration, p99 (s)", "s",
          (("sync", f"histogram_quantile(0.99, sum by (le) (rate({M['sync_seconds']}_bucket[5m])))"),
           ("{{action}}", f"histogram_quantile(0.99, sum by (le, action) (rate({M['load_seconds']}_bucket[5m])))")),
          (Cw(f"{M['sync_seconds']}_sum"), Cw(f"{M['sync_seconds']}_count")), cw_math="IF(m1 > 0, m0 / m1, 0)"),
    Panel("Registrations by outcome", "short",
          (("{{outcome}} {{code}}", f"sum by (outcome, code) (increase({M['registrations']}[1m]))"),),
          (Cw(M["registrations"], ("outcome",)),)),
    Panel("Leader, registry up, load tests running", "short",
          (("leader", f"sum({M['leader']})"), ("registry up", f"min({M['registry_up']})"),
           ("load tests running", f"max({M['loadtests']}{{status=\"running\"}})")),
          (Cw(M["leader"], (), "Maximum"), Cw(M["registry_up"], (), "Minimum"),
           Cw(M["loadtests"], ("status",), "Maximum", (("status", "running"),)))),
)

ALARMS: tuple[Alarm, ...] = (
    Alarm("P99Latency", "Worst Triton model's p99 latency above the threshold for 3 minutes",
          "P99LatencyAlarmMicroseconds", 100000, "GreaterThanThreshold", 3, 3,
          (Cw(M["summary"], ("quantile",), "Maximum", (("quantile", "0.99"),)),)),
    Alarm("ErrorRate", "Failed inference requests above the threshold (percent of all) in 2 of 3 minutes",
          "ErrorRateAlarmPercent", 1, "GreaterThanThreshold", 3, 2,
          (Cw(M["success"]), Cw(M["failure"])), expression="IF(m0 + m1 > 0, 100 * m1 / (m0 + m1), 0)"),
    Alarm("PendingModels", "Models registered to be servable stay pending for 10 minutes",
          "PendingModelsAlarmThreshold", 0, "GreaterThanThreshold", 10, 10,
          (Cw(M["models"], ("status",), "Maximum", (("status", "pending"),)),)),
    Alarm("UnhealthyServers", "The control plane sees unhealthy Triton servers for 3 minutes",
          "UnhealthyServersAlarmThreshold", 0, "GreaterThanThreshold", 3, 3,
          (Cw(M["servers"], ("health",), "Maximum", (("health", "unhealthy"),)),)),
)


def used_metric_names() -> set[str]:
    """Every metric name a panel or alarm of any target reads (the test checks each is exported)."""
    names = set().union(*(p.metric_names() for p in PANELS))
    return names | {c.metric for a in ALARMS for c in a.metrics}


def is_triton_metric(name: str) -> bool:
    return name.startswith(TRITON_PREFIXES)


# ---- Grafana (kube-prometheus-stack's dashboard sidecar) ------------------------------------------------
def grafana() -> dict:
    panels, x, y = [], 0, 0
    for number, panel in enumerate(PANELS, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        panels.append({
            "id": number, "type": "timeseries", "title": panel.title, "datasource": {"type": "prometheus",
                                                                                      "uid": "${datasource}"},
            "gridPos": {"x": x, "y": y, "w": panel.width, "h": 8},
            "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for i, (legend, expr) in enumerate(panel.promql)]})
        x += panel.width
    return {"title": "triton-fleet", "uid": "triton-fleet", "tags": ["triton-fleet"], "timezone": "utc",
            "schemaVersion": 39, "version": 1, "refresh": "30s", "time": {"from": "now-3h", "to": "now"},
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                     "label": "Prometheus"}]},
            "panels": panels}


# ---- CloudWatch: widgets, alarms, the agent's Prometheus scraping -------------------------------------
def _search(query: Cw, cluster: str, namespace: str = NAMESPACE) -> str:
    dims = ",".join((namespace, "ClusterName", *query.dims))
    where = "".join(f' {key}="{value}"' for key, value in query.where)
    return f"SEARCH('{{{dims}}} MetricName=\"{query.metric}\" ClusterName=\"{cluster}\"{where}', '{query.stat}', 60)"


def _widget_metrics(panel: Panel, cluster: str) -> list:
    if panel.cw_math is None:
        return [[{"expression": _search(q, cluster), "id": f"q{i}"}] for i, q in enumerate(panel.cw)]
    rows = [[{"expression": f"SUM({_search(q, cluster)})", "id": f"m{i}", "visible": False}]
            for i, q in enumerate(panel.cw)]
    return rows + [[{"expression": panel.cw_math, "id": "e0", "label": panel.title}]]


def cloudwatch_widgets(panels: tuple[Panel, ...], cluster: str, region: str, top: int = 0) -> list[dict]:
    widgets, x, y = [], 0, top
    for panel in panels:
        if x + panel.width > 24:
            x, y = 0, y + 6
        widgets.append({"type": "metric", "x": x, "y": y, "width": panel.width, "height": 6,
                        "properties": {"title": panel.title, "region": region, "period": 60,
                                       "metrics": _widget_metrics(panel, cluster)}})
        x += panel.width
    return widgets


def eks_cloudformation() -> dict:
    """Dashboard and alarms for an EKS cluster whose CloudWatch agent publishes the fleet's metrics."""
    body = json.dumps({"widgets": cloudwatch_widgets(PANELS, "${ClusterName}", "${AWS::Region}")})
    resources: dict = {"Dashboard": {"Type": "AWS::CloudWatch::Dashboard", "Properties": {
        "DashboardName": {"Fn::Sub": "${ClusterName}-triton-fleet"}, "DashboardBody": {"Fn::Sub": body}}}}
    parameters: dict = {
        "ClusterName": {"Type": "String", "Default": "triton-fleet",
                        "Description": "EKS cluster name (the ClusterName dimension the CloudWatch agent adds)"},
        "AlarmTopicArn": {"Type": "String", "Default": "",
                          "Description": "SNS topic for alarm notifications (empty: alarms without actions)"}}
    for alarm in ALARMS:
        parameters[alarm.threshold_parameter] = {"Type": "Number", "Default": alarm.default_threshold,
                                                 "Description": f"{alarm.name} alarm threshold"}
        properties: dict = {
            "AlarmName": {"Fn::Sub": f"${{ClusterName}}-triton-fleet-{alarm.name}"},
            "AlarmDescription": alarm.description, "ComparisonOperator": alarm.comparison,
            "Threshold": {"Ref": alarm.threshold_parameter}, "EvaluationPeriods": alarm.periods,
            "DatapointsToAlarm": alarm.datapoints, "TreatMissingData": alarm.missing,
            "AlarmActions": {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}}
        queries = []
        for i, query in enumerate(alarm.metrics):
            dimensions = [{"Name": "ClusterName", "Value": {"Ref": "ClusterName"}}]
            dimensions += [{"Name": key, "Value": value} for key, value in query.where]
            queries.append({"Id": f"m{i}", "ReturnData": alarm.expression is None, "MetricStat": {
                "Metric": {"Namespace": NAMESPACE, "MetricName": query.metric, "Dimensions": dimensions},
                "Period": 60, "Stat": query.stat}})
        if alarm.expression:
            queries.append({"Id": "e0", "Expression": alarm.expression, "Label": alarm.name, "ReturnData": True})
        properties["Metrics"] = queries
        resources[f"{alarm.name}Alarm"] = {"Type": "AWS::CloudWatch::Alarm", "Properties": properties}
    return {"AWSTemplateFormatVersion": "2010-09-09",
            "Description": "triton-fleet on EKS: CloudWatch dashboard and alarms over the metrics the CloudWatch "
                           "agent scrapes (generated by `fleet dashboards render`; do not edit)",
            "Parameters": parameters,
            "Conditions": {"HasAlarmTopic": {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]}},
            "Resources": resources,
            "Outputs": {"DashboardName": {"Value": {"Ref": "Dashboard"}}}}


def metric_declarations() -> list[dict]:
    """The agent's EMF declarations: every dimension set a panel or alarm queries, per metric."""
    wanted: dict[tuple[str, tuple[str, ...]], set[str]] = {}
    for query in [q for p in PANELS for q in p.cw] + [q for a in ALARMS for q in a.metrics]:
        job = TRITON_JOB if is_triton_metric(query.metric) else CONTROL_PLANE_JOB
        wanted.setdefault((job, ("ClusterName", *query.dims)), set()).add(query.metric)
    return [{"source_labels": ["job"], "label_matcher": f"^{job}$", "dimensions": [list(dims)],
             "metric_selectors": [f"^{name}$" for name in sorted(names)]}
            for (job, dims), names in sorted(wanted.items())]


def cloudwatch_agent_config(cluster: str = "triton-fleet") -> dict:
    return {"agent": {"region": "us-east-1"}, "logs": {"metrics_collected": {"prometheus": {
        "cluster_name": cluster, "log_group_name": f"/aws/containerinsights/{cluster}/prometheus",
        "prometheus_config_path": "/etc/prometheusconfig/prometheus.yaml",
        "emf_processor": {"metric_namespace": NAMESPACE, "metric_declaration_dedup": True,
                          "metric_declaration": metric_declarations()}}}, "force_flush_interval": 5}}


def prometheus_scrape_config(namespace: str = "triton-fleet") -> dict:
    def job(name: str, component: str, port_name: str) -> dict:
        return {"job_name": name, "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}],
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                     "regex": component, "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port_name,
                     "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}]}
    return {"global": {"scrape_interval": "1m", "scrape_timeout": "10s"},
            "scrape_configs": [job(TRITON_JOB, "inference-server", "metrics"),
                               job(CONTROL_PLANE_JOB, "control-plane", "metrics")]}


# ---- ECS: the ad-filter template's dashboard body -------------------------------------------------------
ECS_TEMPLATE = REPO_ROOT / "ecs" / "templates" / "adfilter-fleet.yaml"
ECS_ONLY = [  # the ECS stack's own widgets (its NLB and service), kept ahead of the fleet's panels
    {"type": "metric", "x": 0, "y": 0, "width": 8, "height": 6, "properties": {
        "title": "NLB flows", "region": "${AWS::Region}", "stat": "Sum", "period": 60, "metrics": [
            ["AWS/NetworkELB", "ActiveFlowCount", "LoadBalancer", "${LoadBalancer.LoadBalancerFullName}",
             {"stat": "Average"}], [".", "NewFlowCount", ".", "."]]}},
    {"type": "metric", "x": 8, "y": 0, "width": 8, "height": 6, "properties": {
        "title": "NLB processed bytes", "region": "${AWS::Region}", "stat": "Sum", "period": 60, "metrics": [
            ["AWS/NetworkELB", "ProcessedBytes", "LoadBalancer", "${LoadBalancer.LoadBalancerFullName}"]]}},
    {"type": "metric", "x": 16, "y": 0, "width": 8, "height": 6, "properties": {
        "title": "NLB healthy targets", "region": "${AWS::Region}", "stat": "Minimum", "period": 60, "metrics": [
            ["AWS/NetworkELB", "HealthyHostCount", "TargetGroup", "${TargetGroup.TargetGroupFullName}",
             "LoadBalancer", "${LoadBalancer.LoadBalancerFullName}"],
            [".", "UnHealthyHostCount", ".", ".", ".", ".", {"stat": "Maximum"}]]}},
    {"type": "metric", "x": 0, "y": 6, "width": 12, "height": 6, "properties": {
        "title": "ECS service CPU and memory (%)", "region": "${AWS::Region}", "stat": "Average", "period": 60,
        "metrics": [["AWS/ECS", "CPUUtilization", "ClusterName", "${Cluster}", "ServiceName", "${ServiceName}"],
                    [".", "MemoryUtilization", ".", ".", ".", "."]]}},
]
ECS_BEGIN = "      DashboardBody: !Sub\n        - |\n"
ECS_END = "        - ServiceName: !GetAtt Service.Name\n"


def ecs_dashboard_body() -> str:
    fleet = cloudwatch_widgets(tuple(p for p in PANELS if p.ecs), "${Cluster}", "${AWS::Region}", top=12)
    lines = [json.dumps(widget, ensure_ascii=False) for widget in ECS_ONLY + fleet]
    return '{"widgets": [\n ' + ",\n ".join(lines) + "\n]}\n"


def ecs_template_text(current: str) -> str:
    """The ECS template with its dashboard body replaced by the generated one (nothing else changes)."""
    start, end = current.index(ECS_BEGIN) + len(ECS_BEGIN), current.index(ECS_END)
    body = "".join(f"          {line}\n" for line in ecs_dashboard_body().splitlines())
    return current[:start] + body + current[end:]


# ---- files ----------------------------------------------------------------------------------------------
OBSERVABILITY_K8S = REPO_ROOT / "k8s" / "modules" / "observability"


def rendered() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {
        OBSERVABILITY_K8S / "grafana" / "triton-fleet.json": json.dumps(grafana(), indent=1, ensure_ascii=False),
        OBSERVABILITY_K8S / "cloudwatch" / "cwagentconfig.json": json.dumps(cloudwatch_agent_config(), indent=1),
        OBSERVABILITY_K8S / "cloudwatch" / "prometheus.yaml": yaml.safe_dump(prometheus_scrape_config(),
                                                                              sort_keys=False),
        OBSERVABILITY_K8S / "cloudwatch" / "dashboard-alarms.json": json.dumps(eks_cloudformation(), indent=1,
                                                                                 ensure_ascii=False),
    }
    if ECS_TEMPLATE.exists():
        files[ECS_TEMPLATE] = ecs_template_text(ECS_TEMPLATE.read_text())
    return {path: text if text.endswith("\n") else text + "\n" for path, text in files.items()}


def write(check: bool = False) -> list[Path]:
    """Write the generated files; with check, write nothing and return those that differ."""
    differing = []
    for path, text in rendered().items():
        if not path.exists() or path.read_text() != text:
            differing.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return differing
