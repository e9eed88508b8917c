"""The deployment files: Ray's own validators where Ray has them, their structure where it has none.

The launcher config goes through the cluster launcher's validator (`prepare_config` +
`validate_config`, the JSON schema `ray up` applies), the RayService's serveConfigV2 through
`ray.serve.schema.ServeDeploySchema`, and the training command through the project's own CLI
parser. No KubeRay CRD schema is available offline, so the KubeRay files are checked for what the
system relies on: auth on every container, secrets only by reference, the loop and its ledger on
the head. No Ray is started.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "cluster" / "ray-cluster.yaml"
RAYJOB = ROOT / "cluster" / "kuberay" / "rayjob-train.yaml"
RAYSERVICE = ROOT / "cluster" / "kuberay" / "rayservice.yaml"
SECRETS = ROOT / "cluster" / "kuberay" / "secrets.example.yaml"
DASHBOARD = ROOT / "cluster" / "grafana" / "hybrid-trader.json"

CPU_IMAGE = "registry.example.com/hybrid-trader:0.1.0"
CUDA_IMAGE = CPU_IMAGE + "-cuda"
MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"]
AUTH_SECRET = ("ray-auth-token", "auth_token")
SECRET_ENV = {"UPBIT_ACCESS_KEY", "UPBIT_SECRET_KEY", "GROQ_API_KEY", "HYBRID_ADMIN_TOKEN"}
HEAD_ONLY_ENV = {"UPBIT_ACCESS_KEY", "UPBIT_SECRET_KEY"}
LEDGER_DIR = "/data/ledger"

# The exported names the dashboard may use, with their labels (`le` comes with the histogram).
METRICS = {
    "ray_hybrid_serve_requests_total": {"route", "status"},
    "ray_hybrid_serve_latency_ms_bucket": {"route", "le"},
    "ray_hybrid_predictions_total": {"market", "signal"},
    "ray_hybrid_sizing_source_total": {"source"},
    "ray_hybrid_model_version": {"market"},
    "ray_hybrid_equity_krw": {"arm"},
    "ray_hybrid_return": {"arm"},
    "ray_hybrid_drawdown": {"arm"},
    "ray_hybrid_exposure": {"arm", "market"},
    "ray_hybrid_realised_accuracy": {"market"},
    "ray_hybrid_realised_balanced_accuracy": {"market"},
    "ray_hybrid_decisions_total": {"market", "signal", "arm"},
    "ray_hybrid_orders_total": {"market", "side", "status", "arm"},
}
RAY_BUILTINS = {"ray_serve_deployment_replica_healthy": {"application", "deployment"}}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in load_all(path) if d["kind"] == kind]
    return doc


def pods(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(role, pod spec) for every pod a RayJob or RayService makes: head, each group, submitter."""
    cluster = doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]
    if "submitterPodTemplate" in doc["spec"]:
        yield "submitter", doc["spec"]["submitterPodTemplate"]["spec"]


def containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for role, spec in pods(doc):
        for container in spec["containers"]:
            yield role, container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


KUBERAY = [one(RAYJOB, "RayJob"), one(RAYSERVICE, "RayService")]


# -- cluster launcher (`ray up`) -------------------------------------------------------------------
def launcher() -> dict[str, Any]:
    return yaml.safe_load(LAUNCHER.read_text())


def test_launcher_config_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(launcher()))


def test_launcher_validator_is_not_a_rubber_stamp():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = launcher()
    broken["available_node_types"]["gpu_worker"]["gpus"] = 1  # not a field the schema knows
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(copy.deepcopy(broken)))


def test_launcher_has_a_cpu_head_and_gpu_workers_from_zero():
    config = launcher()
    head = config["available_node_types"][config["head_node_type"]]
    gpu = config["available_node_types"]["gpu_worker"]
    assert head["resources"] == {}
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1 and gpu["resources"] == {"GPU": 1}
    assert config["docker"]["image"] == CPU_IMAGE
    assert gpu["docker"]["worker_image"] == CUDA_IMAGE
    ledger_mounts = [o for o in config["docker"].get("run_options", []) if LEDGER_DIR in o]
    assert not ledger_mounts, "the ledger must not be mounted on workers"
    assert any(LEDGER_DIR in o for o in config["docker"]["head_run_options"])


def test_launcher_starts_every_node_with_token_auth():
    config = launcher()
    token_dir = next(iter(config["file_mounts"]))
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert "RAY_AUTH_MODE=token" in start, key
        assert f"RAY_AUTH_TOKEN_PATH={token_dir}/auth_token" in start, key
    assert "RAY_AUTH_MODE=token" in " ".join(config["setup_commands"])  # for `ray attach` shells
    assert "upbit.env" in " ".join(config["head_start_ray_commands"])
    assert "upbit.env" not in " ".join(config["worker_start_ray_commands"])
    assert "UPBIT_" not in json.dumps(config), "exchange keys come from a mounted file, not here"


# -- the training command --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [launcher()["metadata"]["commands"]["train"], one(RAYJOB, "RayJob")["spec"]["entrypoint"]],
    ids=["ray-up", "rayjob"],
)
def test_training_command_parses_with_the_real_cli(command):
    from train.__main__ import parse_args

    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "train"]
    args = parse_args(argv[3:])
    assert args.command == "tune" and args.use_gpu  # then fits each winner into --registry
    assert args.markets.split(",") == MARKETS
    for uri in (args.data_dir, args.registry, args.storage_path):
        assert uri.startswith("s3://"), "a job's working copy vanishes: paths must be URIs"


# -- KubeRay: both manifests -----------------------------------------------------------------------
@pytest.mark.parametrize("doc", KUBERAY, ids=lambda d: d["kind"])
def test_kuberay_resources_are_ray_io_v1_on_ray_2_60(doc):
    assert doc["apiVersion"] == "ray.io/v1"
    cluster = doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["authOptions"] == {"mode": "token", "secretName": AUTH_SECRET[0]}


@pytest.mark.parametrize("doc", KUBERAY, ids=lambda d: d["kind"])
def test_every_container_runs_with_token_auth(doc):
    for role, container in containers(doc):
        env = env_of(container)
        assert env["RAY_AUTH_MODE"].get("value") == "token", role
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == AUTH_SECRET, role


@pytest.mark.parametrize("doc", KUBERAY, ids=lambda d: d["kind"])
def test_secrets_only_by_reference_and_exchange_keys_only_on_the_head(doc):
    for role, container in containers(doc):
        for name, var in env_of(container).items():
            if name in SECRET_ENV | {"RAY_AUTH_TOKEN"}:
                assert "value" not in var and "secretKeyRef" in var["valueFrom"], (role, name)
            if name in HEAD_ONLY_ENV:
                assert role == "head", (role, name)


@pytest.mark.parametrize("doc", KUBERAY, ids=lambda d: d["kind"])
def test_images_cpu_everywhere_cuda_where_a_gpu_is_requested(doc):
    for role, container in containers(doc):
        wants_gpu = "nvidia.com/gpu" in container.get("resources", {}).get("limits", {})
        assert container["image"] == (CUDA_IMAGE if wants_gpu else CPU_IMAGE), role


def test_example_secrets_hold_placeholders_for_every_key_the_manifests_read():
    secrets = {
        d["metadata"]["name"]: d["stringData"] for d in load_all(SECRETS) if d["kind"] == "Secret"
    }
    assert all("REPLACE" in v for data in secrets.values() for v in data.values())
    for doc in KUBERAY:
        for role, container in containers(doc):
            for var in env_of(container).values():
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], {}), (doc["kind"], role, ref)


# -- KubeRay: training -----------------------------------------------------------------------------
def test_rayjob_is_one_shot_and_starts_without_gpus():
    spec = one(RAYJOB, "RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    (gpu,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1  # hence --use-gpu in the entrypoint


# -- KubeRay: serving and the loop -----------------------------------------------------------------
def serve_config() -> dict[str, Any]:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(one(RAYSERVICE, "RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(raw)
    return raw


def apps() -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in serve_config()["applications"]}


def test_serve_config_validates_and_names_both_applications():
    config = serve_config()
    assert config["http_options"]["host"] == "0.0.0.0"
    assert {n: a["import_path"] for n, a in apps().items()} == {
        "hybrid": "serve.app:app",
        "trading": "trading.keeper:app",
    }


@pytest.mark.parametrize("import_path", ["serve.app:app", "trading.keeper:app"])
def test_import_paths_name_a_module_level_app(import_path):
    module, attr = import_path.split(":")
    spec = importlib.util.find_spec(module)
    if spec is None and module == "trading.keeper":
        pytest.skip("trading/keeper.py is not written yet")
    assert spec is not None and spec.origin, module
    tree = ast.parse(Path(spec.origin).read_text())
    names = {
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    names |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assert attr in names, f"{module} defines no module-level {attr!r}"


def local_apps() -> dict[str, dict[str, Any]]:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((ROOT / "configs" / "serve_deploy.yaml").read_text())
    ServeDeploySchema.model_validate(raw)
    return {a["name"]: a for a in raw["applications"]}


def test_hybrid_app_is_the_local_deploy_config_with_cluster_settings():
    from serve.config import ServeConfig

    expected = local_apps()["hybrid"]
    hybrid = apps()["hybrid"]
    # The same deployments and bounds; only the cluster (on 0.0.0.0) requires the bearer token.
    (ingress,) = [d for d in hybrid["deployments"] if d["name"] == "Ingress"]
    assert ingress["user_config"]["require_token"] is True
    local = copy.deepcopy(expected["deployments"])
    for deployment in local:
        if deployment["name"] == "Ingress":
            deployment["user_config"]["require_token"] = True
    assert hybrid["deployments"] == local
    config = ServeConfig.model_validate(hybrid["args"])  # as Serve validates the builder's args
    assert config.registry_root().startswith("s3://")  # every replica reads the same models
    assert config.source.kind == "upbit"  # no candle files in the image
    assert config.markets is None, "markets come from configs/features.yaml, the one list"
    assert config.predictor == ServeConfig.model_validate(expected["args"]).predictor
    assert config.serving == ServeConfig.model_validate(expected["args"]).serving


def build(import_path: str, args: dict[str, Any]):
    """What `serve deploy` does with an application's import path and args (no Ray needed)."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.utils import import_attr

    return call_user_app_builder_with_args_if_necessary(import_attr(import_path), args)


@pytest.mark.parametrize("source", ["local", "rayservice"])
def test_serve_validates_both_apps_args_into_their_models_and_builds_them(source):
    from features.config import load_features_config

    found = local_apps() if source == "local" else apps()
    graph = build("serve.app:app", found["hybrid"]["args"])
    predictors = graph._bound_deployment.init_args[0]  # Ingress(predictors, sizing)
    assert list(predictors) == load_features_config().markets
    assert {p._bound_deployment.name for p in predictors.values()} == set(predictors)
    options = predictors["KRW-ETH"]._bound_deployment.ray_actor_options
    assert options["num_cpus"] == 0.1  # the `predictor` default reaches every market
    keeper = build("trading.keeper:app", found["trading"]["args"])
    assert keeper._bound_deployment.name == "LoopKeeper"


def test_multiplexed_mode_builds_one_pool_and_the_deploy_config_keeps_only_its_options():
    """`serving.mode: multiplexed` in the shipped deploy config's args: the graph has one
    MultiplexedPredictor pool instead of a deployment per market, and `cluster up`'s deploy config
    drops the per-market entries (Serve would refuse options for a deployment the app lacks)."""
    from ray.serve.schema import ServeDeploySchema

    from cluster.local import deploy_config
    from serve.config import ServeConfig
    from trading.loop_settings import LoopSettings

    found = local_apps()
    args = {**found["hybrid"]["args"], "serving": {"mode": "multiplexed", "replicas": 3}}
    graph = build("serve.app:app", args)
    pool, _, settings = graph._bound_deployment.init_args  # Ingress(pool, sizing, settings)
    assert pool._bound_deployment.name == "MultiplexedPredictor"
    assert pool._bound_deployment.num_replicas == 3
    assert pool._bound_deployment.ray_actor_options["num_cpus"] == 0.1  # `predictor`'s
    assert settings["serving"]["models_per_replica"] == 24
    template = yaml.safe_load((ROOT / "configs" / "serve_deploy.yaml").read_text())
    loop = LoopSettings.model_validate(found["trading"]["args"])
    config = deploy_config(template, ServeConfig.model_validate(args), loop, 18123, "127.0.0.1")
    ServeDeploySchema.model_validate(config)
    (hybrid,) = [a for a in config["applications"] if a["name"] == "hybrid"]
    assert {d["name"] for d in hybrid["deployments"]} == {"Ingress", "SizingNode"}
    assert hybrid["args"]["serving"]["mode"] == "multiplexed"


@pytest.mark.parametrize(
    "import_path, args, field",
    [
        ("serve.app:app", {"poll_s": 0}, "poll_s"),
        ("serve.app:app", {"set": "registry=/abs"}, "set"),  # the old untyped shape
        ("serve.app:app", {"markets": ["KRW-BTC", "../x"]}, "markets"),
        ("trading.keeper:app", {"mode": "yolo"}, "mode"),
        ("trading.keeper:app", {"clock": {"kind": "accelerated", "speed": -1}}, "speed"),
    ],
)
def test_a_wrong_arg_fails_the_build_naming_the_field(import_path, args, field):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        build(import_path, args)


def test_loop_keeper_runs_once_on_the_head_beside_the_ledger():
    from trading.loop_settings import LoopSettings

    trading = apps()["trading"]
    assert trading["route_prefix"] == "/trading"
    settings = LoopSettings.model_validate(trading["args"])  # what the keeper builds from them
    assert settings.mode == "paper"
    assert settings.trading().ledger.resolve_path().parent == Path(LEDGER_DIR)
    (keeper,) = trading["deployments"]
    assert keeper["name"] == "LoopKeeper" and keeper.get("num_replicas", 1) == 1
    assert keeper["ray_actor_options"]["resources"]["node:__internal_head__"] > 0


def test_ledger_volume_is_mounted_on_the_head_only():
    service = one(RAYSERVICE, "RayService")
    claim = one(RAYSERVICE, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    for role, spec in pods(service):
        claims = {
            v["name"]
            for v in spec.get("volumes", [])
            if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
        }
        mounts = [
            m for c in spec["containers"] for m in c.get("volumeMounts", []) if m["name"] in claims
        ]
        if role == "head":
            assert [m["mountPath"] for m in mounts] == [LEDGER_DIR]
            assert spec["securityContext"]["fsGroup"] == 100  # the image runs as 1000:100
        else:
            assert not claims, f"the ledger's volume is attached to the {role} group"


def test_upgrades_never_bring_up_a_second_cluster():
    assert one(RAYSERVICE, "RayService")["spec"]["upgradeStrategy"] == {"type": "None"}


# -- image -----------------------------------------------------------------------------------------
def test_dockerfile_builds_both_variants_with_the_project_and_its_configs():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM rayproject/ray:${RAY_VERSION}-py311 AS base-cpu" in text
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-gpu AS base-cuda" in text
    assert "ARG RAY_VERSION=2.60.0" in text and "ARG TORCH_VERSION=2.13.0" in text
    assert text.index('"torch==${TORCH_VERSION}"') < text.index(
        "pip install --no-cache-dir --no-deps -e"
    )
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"packages = \[(.*?)\]", pyproject).group(1)
    for directory in [*re.findall(r'"(\w+)"', packages), "configs"]:
        assert f"COPY --chown=1000:100 {directory} /app/{directory}" in text, directory
        assert f"!{directory}" in (ROOT / ".dockerignore").read_text(), directory


# -- Grafana ---------------------------------------------------------------------------------------
def exported_metrics() -> dict[str, set[str]]:
    """What the code declares, under the names Ray's Prometheus export gives them."""
    from ray.util.metrics import Counter, Histogram, Metric

    from serve.metrics import prediction_metrics, request_metrics, sizing_metrics
    from trading.monitor import LoopMetrics

    loop = [m for m in vars(LoopMetrics()).values() if isinstance(m, Metric)]
    declared = [*loop, *request_metrics(), *prediction_metrics(), sizing_metrics()]
    exported = {}
    for metric in declared:
        name, tags = "ray_" + metric.info["name"], set(metric.info["tag_keys"])
        if isinstance(metric, Counter):
            exported[name + "_total"] = tags
        elif isinstance(metric, Histogram):
            exported[name + "_bucket"] = tags | {"le"}
        else:
            exported[name] = tags
    return exported


def test_the_code_exports_the_metrics_the_dashboard_is_built_on():
    exported = exported_metrics()
    assert {name: exported.get(name) for name in METRICS} == METRICS


def test_ray_builtins_on_the_dashboard_exist_in_this_ray():
    import ray

    sources = "".join(p.read_text() for p in Path(ray.__file__).parent.glob("serve/_private/*.py"))
    for name in RAY_BUILTINS:
        assert f'"{name.removeprefix("ray_")}"' in sources, name


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            yield panel["title"], target["expr"]


def test_dashboard_uses_a_prometheus_datasource_variable():
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    (datasource,) = [v for v in variables if v["type"] == "datasource"]
    assert datasource["name"] == "datasource" and datasource["query"] == "prometheus"


def test_every_dashboard_query_uses_known_metrics_and_their_labels():
    known = METRICS | RAY_BUILTINS
    plotted = set()
    for title, expr in dashboard_exprs():
        names = set(re.findall(r"\bray_\w+", expr))
        assert names and names <= known.keys(), (title, names - known.keys())
        plotted |= names
        grouped = re.findall(r"\bby \(([^)]*)\)", expr)
        labels = {label.strip() for group in grouped for label in group.split(",")}
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        for name in names:
            assert labels <= known[name], (title, name, labels - known[name])
    assert METRICS.keys() <= plotted, f"never plotted: {sorted(METRICS.keys() - plotted)}"
