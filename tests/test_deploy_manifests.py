"""Production deployment files (deploy/production): parsed, schema-validated, no secrets. No network.

Kubernetes manifests are validated against the Kubernetes OpenAPI schemas shipped inside the
``kubernetes-validate`` package (offline). docker-compose.yml is checked structurally here (no
registry package installable alongside this project ships the Compose specification schema).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROD = ROOT / "deploy" / "production"
K8S = PROD / "k8s"
COMPOSE = PROD / "docker-compose.yml"
K8S_VERSION = "1.30.0"

SECRETISH = re.compile(r"(password|passwd|secret|token|jaas)", re.I)


def k8s_docs() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _default(value: str) -> int:
    """``${VAR:-12}`` -> 12 (the value Compose uses when VAR is unset)."""
    m = re.fullmatch(r"\$\{\w+:-(\d+)\}", str(value))
    return int(m.group(1)) if m else int(value)


def test_every_yaml_parses():
    files = sorted(PROD.rglob("*.yml")) + sorted(PROD.rglob("*.yaml"))
    assert COMPOSE in files and len(files) >= 2
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_k8s_manifests_match_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    docs = k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "StatefulSet", "ConfigMap", "PodDisruptionBudget"} <= kinds
    for path, doc in docs:
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as e:  # pragma: no cover - the message is the point
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.path)}")


def test_k8s_validator_rejects_a_broken_manifest():
    kv = pytest.importorskip("kubernetes_validate")
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "four", "selector": {}, "template": {}}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def _walk_env(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_env(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk_env(v, f"{path}[{i}]")
    else:
        yield path, obj


def test_no_secret_values_in_k8s():
    for path, doc in k8s_docs():
        assert doc["kind"] != "Secret", f"{path.name}: Secrets are created out of band, not committed"
        if doc["kind"] == "ConfigMap":
            for key in doc.get("data", {}):
                assert not SECRETISH.search(key), f"{path.name}: {key} belongs in a Secret"
        for where, value in _walk_env(doc):
            if where.endswith(".name") and isinstance(value, str) and SECRETISH.search(value) \
                    and ".env[" in where:
                # an env var named like a credential must take its value from a Secret
                env = _get(doc, where.rsplit(".", 1)[0])
                assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), f"{path.name}{where}"


def _get(doc, dotted):
    cur = doc
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        cur = cur[int(part[1:-1])] if part.startswith("[") else cur[part]
    return cur


def test_no_secret_values_in_compose():
    text = COMPOSE.read_text()
    for service, spec in compose()["services"].items():
        for key, value in (spec.get("environment") or {}).items():
            if SECRETISH.search(key) and value not in (None, ""):
                s = str(value)
                # every credential-looking value is only ${VAR} references around fixed syntax
                literal = re.sub(r"\$\{[^}]+\}", "", s)
                assert not re.search(r"password=\"[^\"$]", literal), (service, key)
                assert "${" in s, f"{service}: {key} has a literal value"
    # nothing like password: hunter2 anywhere, comments included
    for line in text.splitlines():
        line = re.sub(r"\$\{[^}]*\}", "", line)  # references are fine; what is left must not be a value
        m = re.search(r"(password|token|secret)\w*\s*(?::\s+|=)\"?([^\s\"$'{][^\s\"]*)", line, re.I)
        assert not m or m.group(2).startswith(("/", "...]")), line


def test_compose_structure():
    c = compose()
    services = c["services"]
    for name, spec in services.items():
        assert "image" in spec or "build" in spec, name
    brokers = [n for n, s in services.items() if str(s.get("image", "")).startswith("apache/kafka") and n.startswith("kafka-")]
    assert len(brokers) == 3
    for n in brokers:
        env = services[n]["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3
        assert "SASL_SSL" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert len({services[n]["environment"]["KAFKA_NODE_ID"] for n in brokers}) == 3
    triton = services["triton"]
    assert triton["build"]["dockerfile"] == "deploy/production/triton.Dockerfile"
    for cmd in (["serve"], ["hl7-listen"], ["dicom-listen"], ["db", "upgrade"]):
        assert any(s.get("command", [])[: len(cmd)] == cmd for s in services.values()), cmd


def test_compose_topics_init_creates_every_topic_equally():
    from icuwatch.streams import topics

    init = compose()["services"]["topics-init"]
    env = init["environment"]
    assert set(env["TOPICS"].split()) == set(topics.ALL)
    script = "\n".join(init["command"])
    assert "--replication-factor 3" in script and "min.insync.replicas=2" in script
    assert script.count('--partitions "$$PARTITIONS"') == 2  # topics and changelogs alike
    # Faust's table changelogs are pre-created, else the worker makes them with RF 1
    worker_src = (ROOT / "streams" / "worker.py").read_text()
    for table in env["CHANGELOGS"].split():
        assert f'app.Table("{table}"' in worker_src, table


def test_worker_replicas_bounded_by_partitions():
    c = compose()
    services = c["services"]
    partitions = _default(c["x-icuwatch-env"]["ICUWATCH_PARTITIONS"])
    assert _default(services["topics-init"]["environment"]["PARTITIONS"]) == partitions
    workers = {n: s for n, s in services.items() if s.get("command") == ["worker"]}
    assert 1 <= len(workers) <= partitions
    ports = [s["environment"]["ICUWATCH_WORKER_WEB_PORT"] for s in workers.values()]
    assert len(set(ports)) == len(ports), "each worker on one host needs its own web port"

    docs = k8s_docs()
    cm = next(d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "icuwatch-settings")
    k_partitions = int(cm["data"]["ICUWATCH_PARTITIONS"])
    dep = next(d for _, d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "icuwatch-worker")
    assert 1 <= dep["spec"]["replicas"] <= k_partitions
    assert any(d["kind"] == "PodDisruptionBudget" for _, d in docs)


def test_probes_and_gpu_note():
    docs = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == "Deployment"}
    api = docs["icuwatch-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    triton = docs["triton"]["spec"]["template"]["spec"]["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "nvidia.com/gpu: 1" in (K8S / "triton.yaml").read_text()


def test_triton_model_repository_exists():
    c = compose()
    mounts = c["services"]["triton"]["volumes"]
    src = next(m.split(":")[0] for m in mounts if m.split(":")[1] == "/models")
    repo = (PROD / src).resolve()
    assert repo == ROOT / "deploy" / "triton" / "models"
    assert (repo / "early_warning" / "config.pbtxt").is_file()
    assert (repo / "early_warning" / "1" / "model.py").is_file()
    assert "COPY deploy/triton/models /models" in (PROD / "triton.Dockerfile").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_VERSION\}-py3$",
                     (PROD / "triton.Dockerfile").read_text(), re.M)


def test_dockerfiles_pin_numpy_below_2():
    for name in ("icuwatch.Dockerfile", "triton.Dockerfile"):
        assert "numpy>=1.26,<2" in (PROD / name).read_text(), name
    assert "download.pytorch.org/whl/cpu" in (PROD / "icuwatch.Dockerfile").read_text()
