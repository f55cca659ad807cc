"""Write the Grafana dashboard for vLLM's metrics, and the ConfigMap that ships it.

    python deploy/grafana/build_dashboard.py

writes deploy/grafana/olica-vllm-dashboard.json (import it in Grafana's UI) and
deploy/k8s/monitoring/grafana-dashboard.yaml (the same JSON in a ConfigMap that
Grafana's dashboard sidecar picks up by its grafana_dashboard label). Metric
names are those of vLLM 0.32 (vllm/v1/metrics/loggers.py); Prometheus adds
_total to counters and _bucket/_sum/_count to histograms. tests/test_deploy.py
checks that both files are what this script writes and that every metric exists.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
JSON_OUT = HERE / "olica-vllm-dashboard.json"
CONFIGMAP_OUT = HERE.parent / "k8s" / "monitoring" / "grafana-dashboard.yaml"

SEL = 'namespace=~"$namespace", model_name=~"$model_name"'
DS = {"type": "prometheus", "uid": "${datasource}"}


def quantiles(metric: str, qs=(0.5, 0.9, 0.99)) -> list[dict]:
    targets = [
        {"expr": f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{SEL}}}[$__rate_interval])))",
         "legendFormat": f"p{round(q * 100)}"}
        for q in qs
    ]
    targets.append({"expr": f"sum(rate({metric}_sum{{{SEL}}}[$__rate_interval])) / "
                            f"sum(rate({metric}_count{{{SEL}}}[$__rate_interval]))",
                    "legendFormat": "mean"})
    return targets


def panel(pid: int, title: str, targets: list[dict], grid: tuple[int, int, int, int], unit: str,
          kind: str = "timeseries", description: str = "", max_: float | None = None) -> dict:
    x, y, w, h = grid
    defaults: dict = {"unit": unit}
    if max_ is not None:
        defaults["max"] = max_
        defaults["min"] = 0
    p = {
        "id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [dict(t, refId=chr(ord("A") + i), datasource=DS) for i, t in enumerate(targets)],
    }
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    return p


def dashboard() -> dict:
    panels = [
        panel(1, "Running requests", [{"expr": f"sum(vllm:num_requests_running{{{SEL}}})", "legendFormat": "running"}],
              (0, 0, 6, 4), "short", "stat"),
        panel(2, "Waiting requests", [{"expr": f"sum(vllm:num_requests_waiting{{{SEL}}})", "legendFormat": "waiting"}],
              (6, 0, 6, 4), "short", "stat", "What the ScaledObject scales on."),
        panel(3, "KV-cache usage (max over servers)",
              [{"expr": f"max(vllm:kv_cache_usage_perc{{{SEL}}})", "legendFormat": "KV cache"}],
              (12, 0, 6, 4), "percentunit", "stat", max_=1),
        panel(4, "Generation throughput",
              [{"expr": f"sum(rate(vllm:generation_tokens_total{{{SEL}}}[$__rate_interval]))", "legendFormat": "tokens/s"}],
              (18, 0, 6, 4), "short", "stat", "Generated tokens per second, all servers."),
        panel(5, "Token throughput", [
            {"expr": f"sum(rate(vllm:generation_tokens_total{{{SEL}}}[$__rate_interval]))", "legendFormat": "generation"},
            {"expr": f"sum(rate(vllm:prompt_tokens_total{{{SEL}}}[$__rate_interval]))", "legendFormat": "prompt (prefill)"},
        ], (0, 4, 12, 8), "short", description="Tokens per second."),
        panel(6, "Requests running / waiting per server", [
            {"expr": f"sum by (pod) (vllm:num_requests_running{{{SEL}}})", "legendFormat": "running {{pod}}"},
            {"expr": f"sum by (pod) (vllm:num_requests_waiting{{{SEL}}})", "legendFormat": "waiting {{pod}}"},
        ], (12, 4, 12, 8), "short"),
        panel(7, "Time to first token (TTFT)", quantiles("vllm:time_to_first_token_seconds"),
              (0, 12, 12, 8), "s", description="From the histogram vllm:time_to_first_token_seconds."),
        panel(8, "Time per output token (TPOT)", quantiles("vllm:request_time_per_output_token_seconds"),
              (12, 12, 12, 8), "s",
              description="Per request: decode time / (output tokens - 1); histogram "
                          "vllm:request_time_per_output_token_seconds."),
        panel(9, "Inter-token latency", quantiles("vllm:inter_token_latency_seconds"),
              (0, 20, 12, 8), "s", description="Between consecutive output tokens; histogram "
                                               "vllm:inter_token_latency_seconds."),
        panel(10, "End-to-end request latency and queue time",
              quantiles("vllm:e2e_request_latency_seconds", (0.5, 0.99))
              + [dict(t, legendFormat=f"queue {t['legendFormat']}")
                 for t in quantiles("vllm:request_queue_time_seconds", (0.5, 0.99))],
              (12, 20, 12, 8), "s"),
        panel(11, "KV-cache usage per server",
              [{"expr": f"max by (pod) (vllm:kv_cache_usage_perc{{{SEL}}})", "legendFormat": "{{pod}}"}],
              (0, 28, 12, 8), "percentunit", max_=1,
              description="Near 100 %: requests get preempted (see Preemptions)."),
        panel(12, "Finished requests / s by reason", [
            {"expr": f"sum by (finished_reason) (rate(vllm:request_success_total{{{SEL}}}[$__rate_interval]))",
             "legendFormat": "{{finished_reason}}"},
        ], (12, 28, 12, 8), "reqps"),
        panel(13, "Preemptions / s", [
            {"expr": f"sum(rate(vllm:num_preemptions_total{{{SEL}}}[$__rate_interval]))", "legendFormat": "preemptions"},
        ], (0, 36, 12, 8), "short"),
        panel(14, "Prefix-cache hit rate", [
            {"expr": f"sum(rate(vllm:prefix_cache_hits_total{{{SEL}}}[$__rate_interval])) / "
                     f"sum(rate(vllm:prefix_cache_queries_total{{{SEL}}}[$__rate_interval]))",
             "legendFormat": "hit rate"},
        ], (12, 36, 12, 8), "percentunit", max_=1, description="Tokens found in the prefix cache / tokens looked up."),
    ]
    var = {"type": "query", "datasource": DS, "refresh": 2, "includeAll": True, "multi": True,
           "current": {"text": "All", "value": "$__all"}, "sort": 1}
    return {
        "uid": "olica-vllm",
        "title": "Olica / vLLM serving",
        "description": "vLLM 0.32 server metrics: throughput, TTFT/TPOT percentiles, KV cache, queue.",
        "tags": ["olica", "vllm"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            dict(var, name="namespace", label="Namespace",
                 query={"query": "label_values(vllm:num_requests_running, namespace)", "refId": "ns"},
                 definition="label_values(vllm:num_requests_running, namespace)"),
            dict(var, name="model_name", label="Model",
                 query={"query": 'label_values(vllm:num_requests_running{namespace=~"$namespace"}, model_name)',
                        "refId": "model"},
                 definition='label_values(vllm:num_requests_running{namespace=~"$namespace"}, model_name)'),
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def configmap_yaml(dash_json: str) -> str:
    body = "\n".join(("    " + line) if line else "" for line in dash_json.rstrip("\n").split("\n"))
    return (
        "# Generated by deploy/grafana/build_dashboard.py (as is deploy/grafana/olica-vllm-dashboard.json);\n"
        "# edit the script, not this file. Grafana's dashboard sidecar (kube-prometheus-stack:\n"
        "# grafana.sidecar.dashboards.enabled) loads ConfigMaps labelled grafana_dashboard=\"1\";\n"
        "# it may need searchNamespace=ALL to look in this namespace.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: olica-vllm-dashboard\n"
        "  namespace: olica\n"
        "  labels: {grafana_dashboard: \"1\", app.kubernetes.io/name: olica-vllm, app.kubernetes.io/part-of: olica}\n"
        "data:\n"
        "  olica-vllm-dashboard.json: |\n"
        f"{body}\n"
    )


def render() -> tuple[str, str]:
    dash_json = json.dumps(dashboard(), indent=2) + "\n"
    return dash_json, configmap_yaml(dash_json)


def main() -> None:
    dash_json, cm = render()
    JSON_OUT.write_text(dash_json)
    CONFIGMAP_OUT.write_text(cm)


if __name__ == "__main__":
    main()
