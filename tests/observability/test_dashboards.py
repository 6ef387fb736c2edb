"""The dashboards and alarms of every target come from one description, and the committed files are
exactly what it generates; the generated templates and manifests pass the same linters as the rest."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from control_plane.observability import dashboards as d

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_committed_files_are_what_the_description_generates():
    assert d.write(check=True) == [], "run `fleet dashboards render` and commit the result"


def test_every_panel_has_a_prometheus_query_and_a_cloudwatch_query():
    for panel in d.PANELS:
        assert panel.promql and panel.cw, panel.title
        if panel.cw_math:
            assert all(f"m{i}" in panel.cw_math for i in range(len(panel.cw))), panel.title


def test_all_metric_names_come_from_the_one_list():
    assert d.used_metric_names() <= set(d.METRICS.values()) | {
        f"{d.METRICS[k]}_{suffix}" for k in ("tick", "sync_seconds", "load_seconds") for suffix in
        ("bucket", "sum", "count")}


def test_grafana_dashboard_has_every_panel_and_a_datasource_variable():
    dashboard = json.loads((d.OBSERVABILITY_K8S / "grafana" / "triton-fleet.json").read_text())
    assert [p["title"] for p in dashboard["panels"]] == [p.title for p in d.PANELS]
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    assert all(t["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] for t in p["targets"])


def test_the_grafana_configmap_is_labelled_for_the_sidecar_in_the_overlays_that_run_the_control_plane():
    for overlay in ("all", "control-plane"):
        rendered = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                                  capture_output=True, text=True, check=True).stdout
        maps = [o for o in yaml.safe_load_all(rendered) if o and o["kind"] == "ConfigMap"
                and o["metadata"]["labels"].get("grafana_dashboard") == "1"]
        assert len(maps) == 1 and maps[0]["metadata"]["namespace"] == "triton-fleet"
        assert json.loads(maps[0]["data"]["triton-fleet.json"])["uid"] == "triton-fleet"


def test_eks_alarms_cover_p99_latency_error_rate_pending_models_and_unhealthy_servers():
    template = d.eks_cloudformation()
    alarms = {name: r["Properties"] for name, r in template["Resources"].items()
              if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert set(alarms) == {"P99LatencyAlarm", "ErrorRateAlarm", "PendingModelsAlarm", "UnhealthyServersAlarm"}
    declared = {(tuple(x["dimensions"][0]), s.strip("^$")) for x in d.metric_declarations()
                for s in x["metric_selectors"]}
    for alarm in alarms.values():
        for query in alarm["Metrics"]:
            if "MetricStat" in query:
                metric = query["MetricStat"]["Metric"]
                dims = tuple(dim["Name"] for dim in metric["Dimensions"])
                assert (dims, metric["MetricName"]) in declared, "the agent publishes what the alarm reads"


def test_the_eks_cloudformation_template_passes_cfn_lint(tmp_path):
    path = d.OBSERVABILITY_K8S / "cloudwatch" / "dashboard-alarms.json"
    done = subprocess.run([str(BIN / "cfn-lint"), str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_cloudwatch_agent_configmaps_render_and_validate_strictly(tmp_path):
    rendered = subprocess.run(["kubectl", "kustomize", str(d.OBSERVABILITY_K8S / "cloudwatch")],
                              capture_output=True, text=True, check=True).stdout
    (tmp_path / "cw.yaml").write_text(rendered)
    done = subprocess.run([str(BIN / "kubernetes-validate"), "-k", "1.33.0", "--strict", str(tmp_path / "cw.yaml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    maps = {o["metadata"]["name"]: o for o in yaml.safe_load_all(rendered)}
    agent = json.loads(maps["prometheus-cwagentconfig"]["data"]["cwagentconfig.json"])
    assert agent["logs"]["metrics_collected"]["prometheus"]["emf_processor"]["metric_namespace"] == d.NAMESPACE
    scrape = yaml.safe_load(maps["prometheus-config"]["data"]["prometheus.yaml"])
    jobs = [job["job_name"] for job in scrape["scrape_configs"]]
    assert jobs == [d.TRITON_JOB, d.CONTROL_PLANE_JOB]


def test_the_ecs_dashboard_keeps_its_own_widgets_and_gains_the_fleet_panels_that_apply():
    body = d.ecs_dashboard_body()
    widgets = json.loads(body.replace("${", "{"))["widgets"]
    titles = [w["properties"]["title"] for w in widgets]
    assert titles[:4] == ["NLB flows", "NLB processed bytes", "NLB healthy targets", "ECS service CPU and memory (%)"]
    assert titles[4:] == [p.title for p in d.PANELS if p.ecs]
    assert "fleet_" not in body, "the ECS fleet runs no control plane or packs: their panels do not apply"
