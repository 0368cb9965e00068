"""Start and stop local Ray nodes that belong to *this* process only.

Test support (``tests/conftest.py``, the Ray tests): a real ``ray start`` head (for
``ray job submit``) or a fake autoscaling cluster.

Design rules, because other people's Ray processes may be running on the same
machine:

* every node is ``ray start ... --block`` in its **own process group**
  (``start_new_session=True``); stopping it (:func:`stop_process_group`) is
  SIGTERM to that ``ray start`` process (it stops its children in ~2-4 s), then
  SIGTERM and finally SIGKILL to whatever of *its* group or descendants is left.
  ``ray stop`` is never used: it stops every Ray process of the user.
* every port is chosen free (no fixed 6379/8265/10001/52365), every node gets its
  own short ``--temp-dir``, and all traffic stays on loopback addresses: nodes on
  ``CLUSTER_IP`` (127.0.0.2, see below), the dashboard on 127.0.0.1.

``FakeAutoscalingCluster`` replaces ``ray.cluster_utils.AutoscalingCluster``,
which in Ray 2.60 cannot be used here: its ``start()`` and ``shutdown()`` run
``ray stop --force`` (killing every Ray cluster on the machine), its generated
config is read from ``fake_multi_node/example.yaml``, which the Ray wheel does not
ship, and its fake worker nodes always join GCS port 6379.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

LOOPBACK = "127.0.0.1"
# Ray rewrites a node IP or address of "127.0.0.1"/"localhost" to the machine's
# outward IP (services.resolve_ip_for_localhost) unless multi-node support is
# switched off, which `ray start --address` refuses. Another loopback address is
# left alone, so real multi-node clusters here live on 127.0.0.2: all traffic
# stays on the loopback interface.
CLUSTER_IP = "127.0.0.2"
READY_MARKER = "Ray runtime started"
# Ray's minimum object store is 75 MiB; keep local nodes small (2-core CI box).
DEFAULT_OBJECT_STORE_BYTES = 100 * 1024 * 1024


def find_free_ports(n: int, host: str = "0.0.0.0") -> list[int]:
    """``n`` distinct TCP ports that are free right now (on every interface when
    ``host`` is 0.0.0.0, so a port bound on any loopback address is skipped)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_free_port(host: str = "0.0.0.0") -> int:
    return find_free_ports(1, host)[0]


def ray_executable() -> str:
    """The ``ray`` CLI of the running interpreter's environment."""
    candidate = Path(sys.executable).with_name("ray")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise FileNotFoundError("no `ray` executable beside the interpreter or on PATH")
    return found


def ray_cli_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Environment for the `ray` processes we start (nodes) and for `ray job ...` clients talking to them."""
    env = os.environ.copy()
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # `python` in a job entrypoint (`ray job submit -- python ...`) must be this
    # environment's interpreter even when the venv is not activated.
    bindir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        env["PATH"] = bindir + (os.pathsep + path if path else "")
    # A driver address inherited from an outer cluster must not redirect our node.
    env.pop("RAY_ADDRESS", None)
    # Ray 2.60 picks token auth differently per process (a head turns it on when ~/.ray/auth_token exists, a joining
    # node or a connecting driver does not): every node and client we start follows this process's mode.
    env["RAY_AUTH_MODE"] = _auth_mode()
    for name, value in (extra or {}).items():  # None unsets: e.g. RAY_AUTH_MODE as a user's shell leaves it
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


# --------------------------------------------------------------------------- processes


@dataclass
class RayNodeProcess:
    """One ``ray start --block`` process, leader of its own process group."""

    popen: subprocess.Popen
    args: list[str]
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def pgid(self) -> int:
        # start_new_session=True makes the child a session and group leader.
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until ``ray start`` printed that the runtime is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARKER in self.log_text():
                return
            if not self.alive():
                raise RuntimeError(
                    f"`{' '.join(self.args)}` exited with {self.popen.returncode}:\n"
                    + self.log_text()[-4000:]
                )
            time.sleep(0.2)
        raise TimeoutError(
            f"ray node not ready after {timeout:.0f}s:\n" + self.log_text()[-4000:]
        )

    def stop(self, timeout: float = 30.0) -> list[int]:
        """Stop this node's process group; returns the pids that needed SIGKILL."""
        if self._stopped:
            return []
        self._stopped = True
        return stop_process_group(self.popen, timeout=timeout)


def _spawn(args: Sequence[str], log_path: Path, env: Mapping[str, str]) -> RayNodeProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    return RayNodeProcess(popen=popen, args=list(args), log_path=log_path)


def _psutil():
    import ray  # noqa: F401  (Ray puts its vendored psutil on sys.path)
    import psutil

    return psutil


def _group_members(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) == pgid:
                pids.append(int(entry))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


class _Tracked:
    """Processes of one group/tree, held as psutil handles so that a pid reused
    by someone else's process after ours exited is never signalled."""

    def __init__(self, leader_pid: int):
        self.psutil = _psutil()
        self.pgid = leader_pid
        self.procs: dict[int, Any] = {}
        self.add([leader_pid])
        try:
            self.add(p.pid for p in self.psutil.Process(leader_pid).children(recursive=True))
        except self.psutil.NoSuchProcess:
            pass
        self.refresh()

    def add(self, pids: Iterable[int]) -> None:
        for pid in pids:
            if pid in self.procs:
                continue
            try:
                self.procs[pid] = self.psutil.Process(pid)
            except self.psutil.NoSuchProcess:
                continue

    def refresh(self) -> None:
        self.add(_group_members(self.pgid))

    def alive(self) -> list[Any]:
        self.refresh()
        out = []
        for p in self.procs.values():
            try:
                if p.is_running() and p.status() != self.psutil.STATUS_ZOMBIE:
                    out.append(p)
            except self.psutil.NoSuchProcess:
                continue
        return out

    def signal(self, procs: Iterable[Any], sig: int) -> None:
        for p in procs:
            with contextlib.suppress(self.psutil.NoSuchProcess, ProcessLookupError):
                p.send_signal(sig)  # checks the process is still the same one

    def wait_gone(self, seconds: float) -> list[Any]:
        deadline = time.monotonic() + seconds
        remaining = self.alive()
        while remaining and time.monotonic() < deadline:
            time.sleep(0.2)
            remaining = self.alive()
        return remaining


def stop_process_group(
    popen: subprocess.Popen, timeout: float = 30.0, kill_timeout: float = 10.0
) -> list[int]:
    """Stop the process group led by ``popen`` (started with ``start_new_session=True``).

    1. SIGTERM to the leader only: ``ray start --block`` then shuts its children
       down in order (~2-4 s; SIGTERM to the whole group at once takes ~30 s,
       because every Ray process starts its own graceful shutdown);
    2. SIGTERM to whatever of the group, or descended from the leader, is left
       (e.g. raylets the fake autoscaler started), for up to ``timeout`` s;
    3. SIGKILL to what is still left.

    Only processes in that group or descended from ``popen`` are ever signalled.
    Returns the pids that had to be SIGKILLed.
    """
    if popen.poll() is not None and not _group_members(popen.pid):
        return []
    tracked = _Tracked(popen.pid)
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(signal.SIGTERM)
    remaining = tracked.wait_gone(min(15.0, timeout))
    if remaining:
        tracked.signal(remaining, signal.SIGTERM)
        remaining = tracked.wait_gone(timeout)
    if remaining:
        tracked.signal(remaining, signal.SIGKILL)
        tracked.wait_gone(kill_timeout)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=kill_timeout)
    return [p.pid for p in remaining]


# --------------------------------------------------------------------------- head/worker


@dataclass
class LocalRayHead(RayNodeProcess):
    """A head node started by :func:`start_ray_head`."""

    address: str = ""  # GCS address "127.0.0.1:<port>", for ray.init / ray start
    dashboard_url: str | None = None  # "http://127.0.0.1:<port>", for ray job submit
    temp_dir: Path = Path()
    owns_temp_dir: bool = False
    workers: list[RayNodeProcess] = field(default_factory=list)

    def add_worker(self, **kwargs: Any) -> RayNodeProcess:
        """Start a worker node that joins this head (stopped with the head)."""
        kwargs.setdefault("temp_dir", self.temp_dir)
        worker = start_ray_worker(self.address, **kwargs)
        self.workers.append(worker)
        return worker

    def stop(self, timeout: float = 30.0) -> list[int]:  # type: ignore[override]
        killed: list[int] = []
        for worker in reversed(self.workers):
            killed += worker.stop(timeout=timeout)
        killed += super().stop(timeout=timeout)
        if self.owns_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed


def _resource_args(num_cpus, num_gpus, resources, object_store_memory) -> list[str]:
    args = [f"--num-cpus={num_cpus}"]
    if num_gpus:
        args.append(f"--num-gpus={num_gpus}")
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    if object_store_memory:
        args.append(f"--object-store-memory={int(object_store_memory)}")
    return args


def start_ray_head(
    *,
    num_cpus: int = 1,
    num_gpus: int = 0,
    resources: Mapping[str, float] | None = None,
    object_store_memory: int | None = DEFAULT_OBJECT_STORE_BYTES,
    include_dashboard: bool = True,
    temp_dir: str | os.PathLike | None = None,
    autoscaling_config: str | os.PathLike | None = None,
    env: Mapping[str, str | None] | None = None,  # over this process's (ray_cli_env); None unsets
    extra_args: Sequence[str] = (),
    gcs_port: int | None = None,
    node_ip_address: str = CLUSTER_IP,
    ready_timeout: float = 120.0,
) -> LocalRayHead:
    """``ray start --head --block`` on free loopback ports, in its own process group.

    Returns once ``ray start`` reported the runtime up (and, with the dashboard,
    once the job-submission API answers). The caller must call ``.stop()``.
    """
    owns = temp_dir is None
    # Short path: Ray's unix sockets live below it (108-byte limit).
    tdir = Path(tempfile.mkdtemp(prefix="dr-ray-", dir="/tmp")) if owns else Path(temp_dir)
    free_gcs, dash_port, client_port, agent_port = find_free_ports(4)
    gcs_port = gcs_port or free_gcs
    args = [
        ray_executable(), "start", "--head", "--block",
        f"--node-ip-address={node_ip_address}",
        f"--port={gcs_port}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--temp-dir={tdir}",
        "--disable-usage-stats",
        *_resource_args(num_cpus, num_gpus, resources, object_store_memory),
    ]
    if include_dashboard:
        args += ["--include-dashboard=true", f"--dashboard-host={LOOPBACK}",
                 f"--dashboard-port={dash_port}"]
    else:
        args += ["--include-dashboard=false"]
    if autoscaling_config is not None:
        args.append(f"--autoscaling-config={autoscaling_config}")
    args += list(extra_args)

    node_env = ray_cli_env(env)
    proc = _spawn(args, tdir / "ray-start-head.log", node_env)
    head = LocalRayHead(
        popen=proc.popen,
        args=proc.args,
        log_path=proc.log_path,
        address=f"{node_ip_address}:{gcs_port}",
        dashboard_url=f"http://{LOOPBACK}:{dash_port}" if include_dashboard else None,
        temp_dir=tdir,
        owns_temp_dir=owns,
    )
    try:
        head.wait_ready(ready_timeout)
        if head.dashboard_url:
            wait_for_dashboard(head.dashboard_url, timeout=ready_timeout,
                               agent_url=f"http://{node_ip_address}:{agent_port}", env=node_env)
    except BaseException:
        head.stop()
        raise
    return head


def start_ray_worker(
    head_address: str,
    *,
    num_cpus: int = 1,
    num_gpus: int = 0,
    resources: Mapping[str, float] | None = None,
    object_store_memory: int | None = DEFAULT_OBJECT_STORE_BYTES,
    temp_dir: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    node_ip_address: str = CLUSTER_IP,
    ready_timeout: float = 120.0,
) -> RayNodeProcess:
    """``ray start --address=<head> --block`` in its own process group."""
    (agent_port,) = find_free_ports(1)
    args = [
        ray_executable(), "start", "--block",
        f"--address={head_address}",
        f"--node-ip-address={node_ip_address}",
        f"--dashboard-agent-listen-port={agent_port}",
        *_resource_args(num_cpus, num_gpus, resources, object_store_memory),
    ]
    if temp_dir is not None:
        args.append(f"--temp-dir={temp_dir}")
    args += list(extra_args)
    log_dir = Path(temp_dir) if temp_dir is not None else Path(tempfile.gettempdir())
    proc = _spawn(args, log_dir / f"ray-start-worker-{agent_port}.log", ray_cli_env(env))
    try:
        proc.wait_ready(ready_timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def _auth_mode() -> str:
    """This process's Ray auth mode: "token" once a local ``ray.init()`` here enabled it, else "disabled" (what a
    driver connecting to an existing cluster assumes)."""
    return os.environ.get("RAY_AUTH_MODE", "disabled").lower()


def _auth_headers(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The bearer header for a dashboard started with ``env``: its token (RAY_AUTH_TOKEN, the RAY_AUTH_TOKEN_PATH
    file, or ~/.ray/auth_token) when there is one; a dashboard without token auth ignores it."""
    token = env.get("RAY_AUTH_TOKEN")
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token")
    if token is None and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def wait_for_dashboard(url: str, timeout: float = 60.0, agent_url: str | None = None,
                       env: Mapping[str, str] = os.environ) -> None:
    """Wait until the dashboard's job API (``/api/version``) answers 200 and, with ``agent_url``, the head node's
    dashboard agent too (``/api/local_raylet_healthz``): job submissions are forwarded to that agent, and one sent
    while it still starts fails with "Server disconnected". ``env``: the head's environment (its auth token)."""
    deadline = time.monotonic() + timeout
    for endpoint in [url.rstrip("/") + "/api/version"] + ([agent_url.rstrip("/") + "/api/local_raylet_healthz"]
                                                         if agent_url else []):
        last: Exception | None = None
        while True:
            try:
                request = urllib.request.Request(endpoint, headers=_auth_headers(env))
                with urllib.request.urlopen(request, timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError, ValueError) as e:
                last = e
            if time.monotonic() > deadline:
                raise TimeoutError(f"{endpoint} not answering after {timeout:.0f}s: {last}")
            time.sleep(0.5)


def alive_nodes() -> list[dict]:
    """Alive nodes of the cluster the current driver is connected to."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def wait_for_alive_nodes(
    predicate, timeout: float = 60.0, interval: float = 0.5
) -> list[dict]:
    """Poll :func:`alive_nodes` until ``predicate(nodes)`` is true."""
    deadline = time.monotonic() + timeout
    nodes: list[dict] = []
    while time.monotonic() < deadline:
        nodes = alive_nodes()
        if predicate(nodes):
            return nodes
        time.sleep(interval)
    raise TimeoutError(
        f"cluster did not reach the expected state in {timeout:.0f}s; alive nodes: "
        + json.dumps([{"id": n["NodeID"][:8], "res": n.get("Resources")} for n in nodes])
    )


# --------------------------------------------------------------------------- autoscaling


FAKE_HEAD_NODE_TYPE = "ray.head.default"


class FakeAutoscalingCluster:
    """A one-machine autoscaling cluster (Ray's ``fake_multinode`` provider).

    The head runs the real Ray autoscaler (v1 monitor) with
    ``RAY_FAKE_CLUSTER=1``; "launching" a worker node starts one more raylet on
    this machine with the node type's (fake) resources, "terminating" it stops
    that raylet. Everything is in the head's process group, so
    :meth:`shutdown` stops only this cluster.
    """

    def __init__(
        self,
        head_resources: Mapping[str, float],
        worker_node_types: Mapping[str, Mapping[str, Any]],
        *,
        idle_timeout_minutes: float = 0.1,
        upscaling_speed: float = 1.0,
        max_workers: int | None = None,
        autoscaler_update_interval_s: int = 1,
    ):
        self.head_resources = dict(head_resources)
        self.worker_node_types = copy.deepcopy(dict(worker_node_types))
        self.idle_timeout_minutes = idle_timeout_minutes
        self.upscaling_speed = upscaling_speed
        self.max_workers = (
            max_workers
            if max_workers is not None
            else sum(int(t.get("max_workers", 0)) for t in self.worker_node_types.values())
        )
        self.autoscaler_update_interval_s = autoscaler_update_interval_s
        self.head: LocalRayHead | None = None
        self._tmp: Path | None = None

    def config(self, gcs_address: str) -> dict[str, Any]:
        """The autoscaler config (Ray's cluster-config schema, provider fake_multinode)."""
        types = copy.deepcopy(self.worker_node_types)
        types[FAKE_HEAD_NODE_TYPE] = {
            "resources": {k: v for k, v in self.head_resources.items()},
            "node_config": {},
            "max_workers": 0,
        }
        return {
            "cluster_name": "darth-ray-fake",
            "max_workers": self.max_workers,
            "upscaling_speed": self.upscaling_speed,
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "provider": {
                "type": "fake_multinode",
                # Fake nodes join *our* GCS, not the default port 6379.
                "gcs_address": gcs_address,
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "auth": {},
            "docker": {},
            "available_node_types": types,
            "head_node_type": FAKE_HEAD_NODE_TYPE,
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }

    def start(self, ready_timeout: float = 120.0) -> LocalRayHead:
        from ray.autoscaler._private.util import validate_config

        self._tmp = Path(tempfile.mkdtemp(prefix="dr-fake-", dir="/tmp"))
        # The GCS port must be known before the head starts (it goes in the config),
        # so pass it explicitly instead of letting start_ray_head choose.
        gcs_port = find_free_port()
        config = self.config(f"{CLUSTER_IP}:{gcs_port}")
        validate_config(config)
        config_path = self._tmp / "autoscaling.json"
        config_path.write_text(json.dumps(config))
        head = dict(self.head_resources)
        self.head = start_ray_head(
            gcs_port=gcs_port,
            num_cpus=int(head.pop("CPU", 1)),
            num_gpus=int(head.pop("GPU", 0)),
            resources=head or None,
            include_dashboard=False,
            temp_dir=self._tmp,
            autoscaling_config=config_path,
            env={
                "RAY_FAKE_CLUSTER": "1",
                "AUTOSCALER_UPDATE_INTERVAL_S": str(int(self.autoscaler_update_interval_s)),
                # Fake worker raylets are started inside the autoscaler process
                # with no node IP, which Ray would resolve to the machine's outward
                # IP; with multi-node support "off" it resolves to 127.0.0.1. (The
                # head is on CLUSTER_IP, which is never rewritten; no
                # `ray start --address`, which refuses this setting, is used here.)
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            },
            ready_timeout=ready_timeout,
        )
        return self.head

    @property
    def address(self) -> str:
        assert self.head is not None, "cluster not started"
        return self.head.address

    def shutdown(self, timeout: float = 30.0) -> list[int]:
        killed: list[int] = []
        if self.head is not None:
            killed = self.head.stop(timeout=timeout)
            self.head = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return killed

    def __enter__(self) -> "FakeAutoscalingCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

