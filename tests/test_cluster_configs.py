"""cluster/*.yaml: Ray's own cluster-config validation for the launcher configs
(aws, gcp), a KubeRay field check plus Ray's KubeRay translation for the RayCluster,
and proof that the checks reject broken configs. Nothing here contacts a cloud."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
PLACEHOLDER = "REPLACE_ME"


def load(name: str) -> dict:
    with open(CLUSTER / name) as f:
        return yaml.safe_load(f)


def ray_up_validate(config: dict) -> dict:
    """What `ray up` does with a config before it contacts the cloud:
    commands._bootstrap_config -> prepare_config (defaults of the provider's
    defaults.yaml, merged setup commands, docker checks, per-type max_workers),
    then validate_config (ray-schema.json + cross-field checks)."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)\s*", dep)
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def pip_installs(commands: list[str]) -> list[list[str]]:
    """Requirement lists of the `pip install` commands, in order."""
    out = []
    for cmd in commands:
        for part in re.split(r"&&|;|\|\|", cmd):
            words = shlex.split(part)
            for i in range(len(words) - 1):
                if words[i] in ("pip", "pip3") and words[i + 1] == "install":
                    out.append([w for w in words[i + 2:] if not w.startswith("-")])
                    break
    return out


def check_pins(commands: list[str]) -> None:
    installs = pip_installs(commands)
    assert installs, "no pip install in the setup commands"
    # torch and torchvision pinned, installed first, before anything could pull
    # another torch build.
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(installs[0])
    flat = [req for reqs in installs for req in reqs]
    pins = pyproject_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["ray"] == ray.__version__
    for name, version in pins.items():
        pinned = [r for r in flat if re.match(rf"{re.escape(name)}(\[[^\]]*\])?==", r, re.I)]
        assert pinned, f"{name} is not installed with a pin"
        assert all(r.split("==")[1] == version for r in pinned), (name, pinned)
    # No unpinned or differently pinned torch anywhere.
    assert all(r in ("torch==2.14.1", "torchvision==0.29.1")
               for r in flat if re.match(r"torch(vision)?\b", r))


# ------------------------------------------------------------------ launcher configs


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_ray_validation(name):
    config = load(name)
    prepared = ray_up_validate(config)
    assert prepared["provider"]["type"] == name.split(".")[0]
    assert prepared["cluster_name"] == "darth-ray"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_gpu_workers_autoscale_from_zero_with_idle_timeout(name):
    prepared = ray_up_validate(load(name))
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["max_workers"] == 0
    assert head["resources"].get("GPU", 0) == 0, "the head must not take GPU work"
    assert head["resources"].get("CPU", 0) >= 1

    workers = {k: v for k, v in types.items() if k != prepared["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    assert len(gpu) == 1, workers
    (wtype,) = gpu.values()
    assert wtype["min_workers"] == 0
    assert 1 <= wtype["max_workers"] <= prepared["max_workers"]
    assert wtype["max_workers"] >= 2, "a multi-worker trial needs >= 2 GPU nodes"
    assert wtype["resources"]["CPU"] >= 1
    assert 0 < prepared["idle_timeout_minutes"] <= 30

    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--head" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--dashboard-port=8265" in head_start
    worker_start = " ".join(prepared["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in worker_start


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_setup_commands_pin_torch_and_the_project_dependencies(name):
    prepared = ray_up_validate(load(name))
    # prepare_config merged setup_commands into both lists, as `ray up` runs them.
    check_pins(prepared["worker_setup_commands"])
    check_pins(prepared["head_setup_commands"])
    docker = prepared["docker"]
    for image in (docker["image"], docker.get("head_image", docker["image"])):
        assert image.startswith(f"rayproject/ray:{ray.__version__}-py311"), image


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_only_marked_values_need_editing(name):
    """Values a user must fill in carry the REPLACE_ME marker, and the README says so."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str) and PLACEHOLDER in node:
            found.append(path)

    walk(load(name), "")
    allowed = re.compile(r".*\.(ImageId|project_id|sourceImage)$")
    assert all(allowed.match(p) for p in found), found
    readme = (CLUSTER / "README.md").read_text()
    assert PLACEHOLDER in readme and name in readme


def _set(config, path, value):
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _rename(config, path, new_key):
    node = config
    for key in path[:-1]:
        node = node[key]
    node[new_key] = node.pop(path[-1])


def _worker_type(config):
    return next(k for k in config["available_node_types"] if k != config["head_node_type"])


BROKEN = {
    "misspelled top-level key": lambda c: _rename(c, ["idle_timeout_minutes"], "idle_timeout_minute"),
    "misspelled node-type key": lambda c: _rename(
        c, ["available_node_types", _worker_type(c), "min_workers"], "min_worker"
    ),
    "fractional GPU resource": lambda c: _set(
        c, ["available_node_types", _worker_type(c), "resources", "GPU"], 0.5
    ),
    "unknown head node type": lambda c: _set(c, ["head_node_type"], "ray.head.missing"),
    "min_workers above global max": lambda c: _set(
        c, ["available_node_types", _worker_type(c), "min_workers"], c["max_workers"] + 1
    ),
    "misspelled docker key": lambda c: _rename(c, ["docker", "pull_before_run"], "pull_befor_run"),
    "setup command not a string": lambda c: _set(c, ["setup_commands"], [["pip", "install"]]),
}


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_ray_validation_rejects_broken_launcher_configs(name, breakage):
    config = load(name)
    ray_up_validate(config)  # the unbroken config passes
    BROKEN[breakage](config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_up_validate(config)


# ------------------------------------------------------------------ KubeRay

# Field names of KubeRay's ray.io/v1 RayCluster CRD (v1.1-v1.4) that this check knows.
# The ray package ships no CRD schema, so the check is written here.
SPEC_KEYS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
    "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
    "gcsFaultToleranceOptions", "upgradeStrategy", "authOptions",
}
HEAD_KEYS = {"serviceType", "headService", "enableIngress", "rayStartParams",
             "template", "resources", "labels"}
WORKER_KEYS = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams",
               "template", "scaleStrategy", "numOfHosts", "idleTimeoutSeconds", "suspend",
               "resources", "labels"}
AUTOSCALER_KEYS = {"resources", "image", "imagePullPolicy", "securityContext",
                   "idleTimeoutSeconds", "upscalingMode", "version", "env", "envFrom",
                   "volumeMounts", "imagePullSecrets"}
CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom",
                  "ports", "resources", "volumeMounts", "lifecycle", "securityContext",
                  "livenessProbe", "readinessProbe", "startupProbe", "workingDir"}


def kuberay_problems(cr: dict) -> list[str]:
    """What KubeRay (or the API server's CRD validation) would reject or mis-run."""
    p: list[str] = []
    if cr.get("apiVersion") != "ray.io/v1":
        p.append(f"apiVersion {cr.get('apiVersion')!r} != 'ray.io/v1'")
    if cr.get("kind") != "RayCluster":
        p.append(f"kind {cr.get('kind')!r} != 'RayCluster'")
    name = (cr.get("metadata") or {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name or "-"):
        p.append(f"metadata.name {name!r} is not a DNS-1123 label")
    spec = cr.get("spec") or {}
    p += [f"spec.{k}: unknown field" for k in sorted(set(spec) - SPEC_KEYS)]
    if spec.get("rayVersion") != ray.__version__:
        p.append(f"spec.rayVersion {spec.get('rayVersion')!r} != installed {ray.__version__}")
    if spec.get("enableInTreeAutoscaling") is not True:
        p.append("spec.enableInTreeAutoscaling is not true")
    auto = spec.get("autoscalerOptions") or {}
    p += [f"spec.autoscalerOptions.{k}: unknown field" for k in sorted(set(auto) - AUTOSCALER_KEYS)]
    idle = auto.get("idleTimeoutSeconds")
    if not isinstance(idle, int) or idle <= 0:
        p.append("spec.autoscalerOptions.idleTimeoutSeconds must be a positive integer")

    def group(g: dict, where: str, allowed: set[str], head: bool) -> None:
        p.extend(f"{where}.{k}: unknown field" for k in sorted(set(g) - allowed))
        params = g.get("rayStartParams")
        if not isinstance(params, dict):
            p.append(f"{where}.rayStartParams missing (a map, may be empty)")
        else:
            p.extend(f"{where}.rayStartParams.{k}: value must be a string"
                     for k, v in params.items() if not isinstance(v, str))
        containers = (((g.get("template") or {}).get("spec") or {}).get("containers")) or []
        if not containers:
            p.append(f"{where}.template.spec.containers missing")
        for i, c in enumerate(containers):
            cw = f"{where}.template.spec.containers[{i}]"
            p.extend(f"{cw}.{k}: unknown field" for k in sorted(set(c) - CONTAINER_KEYS))
            if not c.get("name") or not c.get("image"):
                p.append(f"{cw} needs name and image")
            limits = (c.get("resources") or {}).get("limits") or {}
            if i == 0 and "cpu" not in limits:
                p.append(f"{cw}.resources.limits.cpu missing (Ray's CPU count)")
            if i == 0 and "memory" not in limits:
                p.append(f"{cw}.resources.limits.memory missing")

    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        p.append("spec.headGroupSpec missing")
    else:
        group(head, "spec.headGroupSpec", HEAD_KEYS, True)
    workers = spec.get("workerGroupSpecs")
    if not isinstance(workers, list) or not workers:
        p.append("spec.workerGroupSpecs missing")
        workers = []
    names = [w.get("groupName") for w in workers]
    if len(set(names)) != len(names):
        p.append("workerGroupSpecs[].groupName not unique")
    for i, w in enumerate(workers):
        where = f"spec.workerGroupSpecs[{i}]"
        if not w.get("groupName"):
            p.append(f"{where}.groupName missing")
        group(w, where, WORKER_KEYS, False)
        lo, hi, n = w.get("minReplicas"), w.get("maxReplicas"), w.get("replicas", w.get("minReplicas"))
        if not all(isinstance(x, int) for x in (lo, hi, n)):
            p.append(f"{where}: minReplicas/maxReplicas/replicas must be integers")
        elif not (0 <= lo <= n <= hi):
            p.append(f"{where}: need 0 <= minReplicas <= replicas <= maxReplicas")
    return p


def kuberay_cr() -> dict:
    cr = load("kuberay.yaml")
    # The API server fills the namespace from `kubectl apply -n ...`.
    cr["metadata"].setdefault("namespace", "default")
    return cr


def test_kuberay_raycluster_has_the_required_fields():
    cr = kuberay_cr()
    assert kuberay_problems(cr) == []


def test_kuberay_raycluster_through_rays_kuberay_autoscaler_translation():
    """Ray's KubeRay autoscaler turns the CR into an autoscaling config (and runs
    validate_config on it) exactly as the in-tree autoscaler sidecar does."""
    config = _derive_autoscaling_config_from_ray_cr(kuberay_cr())
    types = config["available_node_types"]
    assert types["headgroup"]["resources"].get("GPU", 0) == 0
    gpu = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) >= 1}
    assert list(gpu) == ["gpu-workers"]
    assert gpu["gpu-workers"]["min_workers"] == 0
    assert gpu["gpu-workers"]["max_workers"] >= 2
    assert gpu["gpu-workers"]["resources"]["CPU"] >= 1
    assert config["idle_timeout_minutes"] == pytest.approx(5.0)


def test_kuberay_containers_install_pins_and_read_the_wandb_secret():
    cr = kuberay_cr()
    spec = cr["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for g in groups:
        c = g["template"]["spec"]["containers"][0]
        assert c["image"].startswith(f"rayproject/ray:{ray.__version__}-py311"), c["image"]
        command = " ".join(c.get("command", []) + c.get("args", []))
        check_pins([command])
        # KubeRay's generated `ray start` runs after the installs.
        assert command.index("pip install") < command.index("KUBERAY_GEN_RAY_START_CMD")
        env = {e["name"]: e for e in c.get("env", [])}
        ref = env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"]
    assert cr["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    worker_limits = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resources"]["limits"]
    assert int(worker_limits["nvidia.com/gpu"]) >= 1



@pytest.mark.parametrize("name", [*LAUNCHER_CONFIGS, "kuberay.yaml"])
def test_every_node_starts_with_an_explicit_auth_mode(name):
    """Ray 2.60 turns token auth on for a head that finds ~/.ray/auth_token and off for a node or client that
    joins: a mode left to Ray can split a cluster from its workers and its `ray job submit` (cluster/README.md,
    "Auth tokens"). Every `ray start` here says it."""
    config = load(name)
    if name == "kuberay.yaml":
        spec = config["spec"]
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        containers = [g["template"]["spec"]["containers"][0] for g in groups]
        assert [{e["name"]: e.get("value") for e in c["env"]}.get("RAY_AUTH_MODE") for c in containers] == \
            ["disabled"] * len(containers)
        return
    prepared = ray_up_validate(config)
    starts = [part.strip() for command in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
              for part in command.split(";") if "ray start" in part]
    assert len(starts) == 2 and all(start.startswith("RAY_AUTH_MODE=disabled ray start") for start in starts), starts

def _kr_worker(cr):
    return cr["spec"]["workerGroupSpecs"][0]


KUBERAY_BROKEN = {
    "misspelled autoscaling switch": lambda cr: cr["spec"].__setitem__(
        "enableIntreeAutoscaling", cr["spec"].pop("enableInTreeAutoscaling")),
    "autoscaling off": lambda cr: cr["spec"].__setitem__("enableInTreeAutoscaling", False),
    "old apiVersion": lambda cr: cr.__setitem__("apiVersion", "ray.io/v1alpha1"),
    "rayVersion mismatch": lambda cr: cr["spec"].__setitem__("rayVersion", "2.9.0"),
    "replicas above maxReplicas": lambda cr: _kr_worker(cr).__setitem__(
        "replicas", _kr_worker(cr)["maxReplicas"] + 1),
    "misspelled minReplicas": lambda cr: _kr_worker(cr).__setitem__(
        "minReplica", _kr_worker(cr).pop("minReplicas")),
    "no image": lambda cr: _kr_worker(cr)["template"]["spec"]["containers"][0].pop("image"),
    "no rayStartParams": lambda cr: cr["spec"]["headGroupSpec"].pop("rayStartParams"),
    "numeric rayStartParam": lambda cr: cr["spec"]["headGroupSpec"]["rayStartParams"]
    .__setitem__("num-cpus", 0),
    "no groupName": lambda cr: _kr_worker(cr).pop("groupName"),
}


@pytest.mark.parametrize("breakage", sorted(KUBERAY_BROKEN))
def test_kuberay_check_rejects_broken_raycluster(breakage):
    cr = kuberay_cr()
    KUBERAY_BROKEN[breakage](cr)
    assert kuberay_problems(cr), f"{breakage} was not detected"


def test_rays_kuberay_translation_rejects_a_group_without_cpu():
    cr = kuberay_cr()
    c = _kr_worker(cr)["template"]["spec"]["containers"][0]
    c["resources"]["limits"].pop("cpu")
    c["resources"]["requests"].pop("cpu")
    with pytest.raises(ValueError, match="CPU"):
        _derive_autoscaling_config_from_ray_cr(cr)
