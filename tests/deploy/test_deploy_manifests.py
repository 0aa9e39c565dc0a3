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

from icuwatch.serving import MODEL_REPOSITORY

ROOT = Path(__file__).resolve().parents[2]
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
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "four", "selector": {}, "template": {}},
    }
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
            if where.endswith(".name") and isinstance(value, str) and SECRETISH.search(value) and ".env[" in where:
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
    brokers = [
        n for n, s in services.items() if str(s.get("image", "")).startswith("apache/kafka") and n.startswith("kafka-")
    ]
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
    from icuwatch.core import topics

    init = compose()["services"]["topics-init"]
    env = init["environment"]
    assert set(env["TOPICS"].split()) == set(topics.ALL)
    script = "\n".join(init["command"])
    assert "--replication-factor 3" in script and "min.insync.replicas=2" in script
    assert script.count('--partitions "$$PARTITIONS"') == 2  # topics and changelogs alike
    # Faust's table changelogs are pre-created, else the worker makes them with RF 1
    app_src = (ROOT / "streams" / "app.py").read_text()
    assert tuple(env["CHANGELOGS"].split()) == topics.TABLES
    for table in topics.TABLES:
        assert f'app.Table("{table}"' in app_src, table


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
    assert repo == MODEL_REPOSITORY
    assert (repo / "early_warning" / "config.pbtxt").is_file()
    assert (repo / "early_warning" / "1" / "model.py").is_file()
    assert "COPY serving/models /models" in (PROD / "triton.Dockerfile").read_text()
    assert re.search(
        r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_VERSION\}-py3$", (PROD / "triton.Dockerfile").read_text(), re.M
    )


def test_dockerfiles_pin_numpy_below_2():
    for name in ("icuwatch.Dockerfile", "triton.Dockerfile"):
        assert "numpy>=1.26,<2" in (PROD / name).read_text(), name
    assert "download.pytorch.org/whl/cpu" in (PROD / "icuwatch.Dockerfile").read_text()


# --- the exported fusion models in the production Triton image -------------------------------------

TRITON_DOCKERFILE = PROD / "triton.Dockerfile"
FUSION_MOUNT = "/models-fusion"
REPOSITORY_FLAGS = ["--model-repository=/models", f"--model-repository={FUSION_MOUNT}"]


def _pyproject_torch() -> str:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [re.fullmatch(r"torch==([\w.]+)", d.replace(" ", "")) for d in deps]
    pins = [m.group(1) for m in pins if m]
    assert len(pins) == 1, deps
    return pins[0]


def _dockerfile_arg(text: str, name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", text, re.M)
    assert m, f"ARG {name}=... missing"
    return m.group(1)


def _dockerfile_cmd(text: str) -> list[str]:
    import json

    cmd = re.findall(r"^CMD (\[.*\])$", text, re.M)
    assert len(cmd) == 1
    return json.loads(cmd[0])


def _k8s_container(name: str) -> dict:
    dep = next(d for _, d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    return dep["spec"]["template"]["spec"]["containers"][0]


def _configmap() -> dict:
    return next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "icuwatch-settings")


def test_triton_image_installs_pyprojects_torch_cpu_build():
    pin = _pyproject_torch()
    text = TRITON_DOCKERFILE.read_text()
    assert _dockerfile_arg(text, "TORCH_VERSION") == pin
    install = next(line for line in text.splitlines() if '"torch==${TORCH_VERSION}"' in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in install  # no CUDA wheels
    assert re.search(r'check_triton_repository\.py \\\n\s+--torch "\$\{TORCH_VERSION\}" /models /models-fusion', text)
    assert (PROD / "check_triton_repository.py").is_file()
    assert "COPY deploy/production/check_triton_repository.py " in text
    assert re.search(r"^COPY core /opt/icuwatch/icuwatch/core$", text, re.M)  # the rule model imports core only
    # the Python services' image carries the same torch
    assert f"torch=={pin}" in (PROD / "icuwatch.Dockerfile").read_text()


def test_triton_image_bakes_the_exported_repository():
    from icuwatch.core.settings import Settings
    from icuwatch.serving import export as triton_export

    text = TRITON_DOCKERFILE.read_text()
    default = _dockerfile_arg(text, "FUSION_REPOSITORY")
    # the default is where `icuwatch export-triton` writes (relative to the build context, the repo root)
    assert ROOT / default == triton_export.default_repository(Settings.model_construct())
    assert re.search(rf"^COPY \$\{{FUSION_REPOSITORY\}} {FUSION_MOUNT}$", text, re.M)
    cmd = _dockerfile_cmd(text)
    assert cmd[0] == "tritonserver" and [a for a in cmd if a.startswith("--model-repository")] == REPOSITORY_FLAGS
    assert "--strict-readiness=true" in cmd
    assert {"--model-control-mode=explicit", "--load-model=*"} <= set(cmd)  # `icuwatch models promote` works


def test_compose_triton_serves_both_repositories():
    c = compose()
    triton = c["services"]["triton"]
    cmd = triton["command"]
    assert [a for a in cmd if a.startswith("--model-repository")] == REPOSITORY_FLAGS
    assert "--strict-readiness=true" in cmd
    assert {"--model-control-mode=explicit", "--load-model=*"} <= set(cmd)  # `icuwatch models promote` works
    arg = triton["build"]["args"]["FUSION_REPOSITORY"]
    m = re.fullmatch(r"\$\{\w+:-([^}]+)\}", arg)
    assert m and m.group(1) == _dockerfile_arg(TRITON_DOCKERFILE.read_text(), "FUSION_REPOSITORY")
    # /models-fusion is the image's (checked at build), not shadowed by a mount
    assert not any(str(v).split(":")[1] == FUSION_MOUNT for v in triton.get("volumes", []))
    health = " ".join(triton["healthcheck"]["test"])
    assert "/v2/health/ready" in health and "/v2/models/$$m/ready" in health
    # the healthcheck also waits for the model the workers score with, when one is set
    assert "${ICUWATCH_SCORING_MODEL-student_live}" in triton["environment"]["TRITON_REQUIRED_MODELS"].split()


def test_k8s_triton_serves_both_repositories():
    triton = _k8s_container("triton")
    args = triton["args"]
    assert [a for a in args if a.startswith("--model-repository")] == REPOSITORY_FLAGS
    assert "--strict-readiness=true" in args
    assert {"--model-control-mode=explicit", "--load-model=*"} <= set(args)
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_the_live_student_scores_by_default_and_the_physionet_student_is_optional():
    from icuwatch.core.settings import SHIPPED_MODEL_REPOSITORY, Settings
    from icuwatch.serving import MODEL_REPOSITORY
    from icuwatch.serving import export as triton_export

    student = triton_export.triton_name(f"{triton_export.STUDENT}-physionet")
    assert student == "student_physionet"
    assert Settings.model_fields["scoring_model"].default == "student_live"
    # the default is committed in the repository both the local and the production tritonserver serve
    assert SHIPPED_MODEL_REPOSITORY == MODEL_REPOSITORY
    assert (MODEL_REPOSITORY / "student_live" / "1" / "export.json").is_file()
    assert "COPY serving/models /models" in TRITON_DOCKERFILE.read_text()
    # Compose: an env-file variable, the live student unless set (set empty: the rules; no ":-")
    assert compose()["x-icuwatch-env"]["ICUWATCH_SCORING_MODEL"] == "${ICUWATCH_SCORING_MODEL-student_live}"
    assert "ICUWATCH_SCORING_MODEL=student_physionet" in COMPOSE.read_text()
    # Kubernetes: the live student in the ConfigMap, the PhysioNet student documented, commented out
    cm = _configmap()
    assert cm["data"].get("ICUWATCH_SCORING_MODEL") == "student_live"
    assert re.search(rf"^\s*# ICUWATCH_SCORING_MODEL: {student}$", (K8S / "configmap.yaml").read_text(), re.M)
    # the student's card is mounted (optionally) where the worker looks for it by default:
    # <state dir>/models/<scoring model with _ as ->/model_card.json (streams/scoring.py load_norm)
    worker = _k8s_container("icuwatch-worker")
    card_dir = f"{cm['data']['ICUWATCH_STATE_DIR']}/models/{student.replace('_', '-')}"
    mount = next(m for m in worker["volumeMounts"] if m["mountPath"] == card_dir)
    assert mount.get("readOnly") is True
    dep = next(d for _, d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "icuwatch-worker")
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["optional"] is True
    ops = (PROD / "OPERATIONS.md").read_text()
    for needle in (
        "icuwatch export-triton",
        "icuwatch shadow",
        "ICUWATCH_SCORING_MODEL=student_physionet",
        "--model-repository=/models-fusion",
    ):
        assert needle in ops, needle


# --- check_triton_repository.py (the image build's check), on a stand-in export ----------------------


def _check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_triton_repository", PROD / "check_triton_repository.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stand_in_export(repo: Path, name: str = "student_toy", torch_version: str | None = None) -> Path:
    """A model directory as ``export-triton`` writes it (its config.pbtxt, model.py, export.json), with
    a small scripted module of the served signature in place of a trained network."""
    import json
    import types
    import warnings
    from typing import Dict, Tuple

    import torch

    from icuwatch.serving import export as triton_export

    class Toy(torch.nn.Module):
        def forward(self, batch: Dict[str, torch.Tensor], early_exit: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
            z = batch["vitals"].flatten(1).sum(1) + batch["labs"].sum(1) + batch["staleness_h"].sum(1)
            z = z + batch["present"].float().sum(1) * 0.1
            return torch.sigmoid(z), torch.zeros(z.shape, dtype=torch.long)

    spec = types.SimpleNamespace(modalities=("vitals", "labs"), dims={"vitals": (8, 14), "labs": (9,), "static": (3,)})
    version = repo / name / triton_export.VERSION
    version.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(triton_export.config_pbtxt(name, spec, True, name.replace("_", "-")))
    (version / "model.py").write_bytes(triton_export.TEMPLATE.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Toy().eval()), str(version / triton_export.TORCHSCRIPT))
    (version / triton_export.PROVENANCE).write_text(json.dumps({"torch": torch_version or torch.__version__}))
    return repo / name


def test_image_check_accepts_an_export_and_refuses_what_would_not_serve(tmp_path):
    import ast

    import torch

    source = (PROD / "check_triton_repository.py").read_text()
    ast.parse(source, feature_version=(3, 10))  # the Triton 24.10 container's Python
    check = _check_module()
    rules = MODEL_REPOSITORY
    installed = check.release(torch.__version__)
    assert installed == _pyproject_torch()

    fusion = tmp_path / "fusion"
    _stand_in_export(fusion)
    lines = check.check([rules, fusion], installed)
    assert any("early_warning: present" in line for line in lines)
    assert any("student_toy: version 1" in line for line in lines)
    assert check.main(["--torch", installed, str(rules), str(fusion)]) == 0

    empty = tmp_path / "empty"
    empty.mkdir()
    assert any("empty" in line for line in check.check([rules, empty], installed))

    with pytest.raises(ValueError, match="pinned"):
        check.check([rules, fusion], "0.0.1")
    old = tmp_path / "old"
    _stand_in_export(old, torch_version="2.12.0+cpu")
    with pytest.raises(ValueError, match="exported by torch"):
        check.check([rules, old], installed)
    dup = tmp_path / "dup"
    _stand_in_export(dup, name="early_warning")
    with pytest.raises(ValueError, match="in both"):
        check.check([rules, dup], installed)
    broken = tmp_path / "broken"
    (_stand_in_export(broken) / "1" / "model.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="does not load"):
        check.check([rules, broken], installed)
    assert check.main(["--torch", installed, str(rules), str(dup)]) == 1


KAFKA_COMMANDS = ("worker", "hl7-listen", "dicom-listen")
"""The icuwatch commands that talk to Kafka (the API and migrations do not)."""


def test_icuwatch_kafka_clients_use_sasl_ssl_from_settings():
    """Every icuwatch Kafka client reaches a SASL_SSL listener with TLS/SASL from ICUWATCH_KAFKA_*
    (streams/kafka/security.py); the password only from the environment / a Secret."""
    from icuwatch.core.settings import Settings

    assert {"kafka_security_protocol", "kafka_sasl_password", "kafka_ssl_cafile"} <= set(Settings.model_fields)
    c = compose()
    env = c["x-icuwatch-env"]
    assert env["ICUWATCH_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["ICUWATCH_KAFKA_SASL_PASSWORD"].startswith("${")
    protocols = dict(
        item.split(":")
        for item in c["services"]["kafka-1"]["environment"]["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    advertised = c["services"]["kafka-1"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    listener = next(
        name
        for name, _, port in (a.partition("://") for a in advertised.split(","))
        if port.endswith(env["ICUWATCH_BROKER"].split(",")[0].split(":")[1])
    )
    assert protocols[listener] == "SASL_SSL", listener
    assert env["ICUWATCH_WORKER_PRODUCER_MAX_BATCH_BYTES"] == "16384"

    config = next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "icuwatch-settings")
    assert config["data"]["ICUWATCH_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    cafile = config["data"]["ICUWATCH_KAFKA_SSL_CAFILE"]
    seen = set()
    for path, doc in k8s_docs():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            if not container.get("args") or container["args"][0] not in KAFKA_COMMANDS:
                continue
            seen.add(container["args"][0])
            password = next(e for e in container["env"] if e["name"] == "ICUWATCH_KAFKA_SASL_PASSWORD")
            assert password["valueFrom"]["secretKeyRef"]["name"] == "icuwatch-credentials", path.name
            mounts = [m for m in container["volumeMounts"] if cafile.startswith(m["mountPath"] + "/")]
            assert mounts, f"{path.name}: nothing mounted at {cafile}"
            assert any(v["name"] == mounts[0]["name"] for v in pod["volumes"]), path.name
    assert seen == set(KAFKA_COMMANDS)
