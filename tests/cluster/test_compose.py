"""docker-compose.yml as Docker Compose itself reads it: `docker-compose config` interpolates the
environment, applies the YAML merges and validates the file against Compose's schema, with no
daemon. What the system relies on is then checked on that rendering: `cluster up` (through the
real CLI parser) on the head, workers joining it, the same paths on every Ray node, Ollama, the GPU
profile, secrets only from the environment, and a Dockerfile that provides the mount points.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
TOKENS = {
    "RAY_AUTH_TOKEN": "ray-token-only-in-the-environment-5c1f",
    "HYBRID_ADMIN_TOKEN": "admin-token-only-in-the-environment-9b2e",
}
CHOSEN_BY_ENV = ("GROQ_API_KEY", "HYBRID_DATA_DIR", "OLLAMA_IMAGE", *TOKENS)
RAY_NODES = ("head", "worker", "worker-gpu")
SHARED_MOUNTS = {"/data/ohlcv", "/data/registry", "/home/ray/ray_results"}


def render(docker_compose: str, path: Path = COMPOSE, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in CHOSEN_BY_ENV}
    return subprocess.run(
        [docker_compose, "-f", str(path), "config"], capture_output=True, text=True, timeout=60,
        cwd=path.parent, env={**clean, **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def services(docker_compose: str) -> dict[str, dict[str, Any]]:
    done = render(docker_compose, **TOKENS)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume, or an absolute host path for a bind mount)."""
    return {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}


def head_script(services: dict[str, dict[str, Any]]) -> list[str]:
    command = services["head"]["command"]
    assert command[:2] == ["bash", "-c"]
    return command[2].replace("$$", "$").splitlines()  # `config` re-escapes a literal $ as $$


def line_starting(script: list[str], prefix: str) -> list[str]:
    (line,) = [line for line in script if line.strip().startswith(prefix)]
    return shlex.split(line.strip().rstrip("&"))


def flag(argv: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    return value


def test_compose_validates_the_file_and_it_has_every_service(services) -> None:
    assert set(services) == {"head", "worker", "worker-gpu", "ollama", "ollama-pull"}


def test_the_validator_is_not_a_rubber_stamp(docker_compose: str, tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["worker"]["comand"] = broken["services"]["worker"].pop("command")
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    done = render(docker_compose, path, **TOKENS)
    assert done.returncode != 0 and "comand" in done.stderr


def test_the_head_runs_cluster_up_paper_on_the_mounted_candles(services) -> None:
    from cluster.__main__ import parse_args
    from cluster.config import load_cluster_config

    script = head_script(services)
    ray_start = line_starting(script, "ray start")
    up = line_starting(script, "python -m cluster")
    args = parse_args(up[3:])
    assert args.command == "up" and args.paper and not args.live
    assert args.address == f"127.0.0.1:{flag(ray_start, '--port')}" and "--head" in ray_start
    assert args.dashboard_url == f"http://127.0.0.1:{flag(ray_start, '--dashboard-port')}"
    assert flag(ray_start, "--dashboard-host") == "0.0.0.0"  # published: reachable from the host
    head = mounts(services["head"])
    # Both sides resolved: ../shared may be a symbolic link, which docker-compose keeps.
    shared = (ROOT.parent / "shared" / "data" / "ohlcv").resolve()
    assert Path(head[args.data_dir]).resolve() == shared
    assert services["head"]["volumes"][0].endswith(":/data/ohlcv:ro")
    assert args.registry in head and str(Path(args.ledger).parent) in head
    cluster = load_cluster_config(overrides=args.set)
    published = {p.split(":")[2].split("/")[0] for p in services["head"]["ports"]}
    assert published == {str(cluster.serve.port), flag(ray_start, "--dashboard-port")}
    assert cluster.serve.host == "0.0.0.0"
    assert all(p.startswith("127.0.0.1:") for p in services["head"]["ports"])


def test_workers_join_the_head_and_see_the_same_paths(services) -> None:
    port = flag(line_starting(head_script(services), "ray start"), "--port")
    head = mounts(services["head"])
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        command = worker["command"]
        assert command[:2] == ["ray", "start"] and "--block" in command
        assert flag(command, "--address") == f"head:{port}"  # the head service's name
        assert worker["depends_on"] == {"head": {"condition": "service_healthy"}}
        shared = mounts(worker)
        assert set(shared) == SHARED_MOUNTS  # no ledger: it lives on the head only
        assert all(shared[path] == head[path] for path in SHARED_MOUNTS)
    assert "/data/ledger" in head


def test_every_ray_node_uses_token_auth_and_secrets_only_from_the_environment(
    services, docker_compose: str
) -> None:
    for name in RAY_NODES:
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert {k: env[k] for k in TOKENS} == TOKENS
        assert not any(k.startswith("UPBIT_") for k in env), "paper trading: no exchange keys"
    raw = yaml.safe_load(COMPOSE.read_text())["x-ray-node"]["environment"]
    for secret in (*TOKENS, "GROQ_API_KEY"):
        assert re.fullmatch(r"\$\{" + secret + r"[:?-].*\}", raw[secret]), secret
    missing = render(docker_compose, HYBRID_ADMIN_TOKEN="x")
    assert missing.returncode != 0 and "export RAY_AUTH_TOKEN" in missing.stderr


def test_the_sizing_node_talks_to_the_ollama_service(services) -> None:
    sizing = yaml.safe_load((ROOT / "configs" / "sizing.yaml").read_text())
    for name in RAY_NODES:
        assert services[name]["environment"]["OLLAMA_HOST"] == "http://ollama:11434"
    pull = services["ollama-pull"]
    assert pull["command"] == ["pull", sizing["ollama"]["model"]]
    assert pull["environment"]["OLLAMA_HOST"] == "http://ollama:11434"
    assert pull["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    assert mounts(services["ollama"])["/root/.ollama"] == "ollama"


def test_the_gpu_worker_is_a_profile_with_an_nvidia_reservation(services) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"] == {"VARIANT": "cuda"} and gpu["image"].endswith("-cuda")
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    for name in ("head", "worker"):
        assert "profiles" not in services[name] and services[name]["build"]["args"] == {
            "VARIANT": "cpu"
        }
        assert services[name]["image"] == gpu["image"].removesuffix("-cuda")


def test_the_dockerfile_provides_what_compose_relies_on(services) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "cpu) index=" in text and "cuda) index=" in text  # the two VARIANT values
    assert "WORKDIR /app" in text and "USER 1000:100" in text  # `python -m cluster` from /app
    made = re.search(r"mkdir -p ([^\\&]+)", text).group(1).split()
    owned = re.search(r"chown 1000:100 ([^\\&\n]+)", text).group(1).split()
    for path in {"/data/ledger", "/data/registry", "/home/ray/ray_results"}:
        assert path in made and path in owned, path  # a new named volume takes their owner
