"""Local Ray clusters of this test process: the process-group helpers, the
``local_ray_head`` fixture (head + a second ``ray start --address`` node), and the
Ray autoscaler adding GPU worker nodes for pending work and removing them when idle
(Ray's fake multi-node provider, one machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from ray_cluster import (
    FakeAutoscalingCluster,
    _group_members,
    alive_nodes,
    find_free_ports,
    stop_process_group,
    wait_for_alive_nodes,
)


def _sentinel() -> subprocess.Popen:
    """A process in a session of its own: stopping our Ray groups must spare it."""
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------- process groups (fast)


def test_find_free_ports_distinct_and_bindable():
    import socket

    ports = find_free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_stop_process_group_stops_tree_and_spares_others():
    # Leader ignores SIGTERM, so the SIGKILL fallback is exercised; one child
    # leaves the group (setsid) and must still be stopped as a descendant.
    script = (
        "trap '' TERM; sleep 300 & setsid sleep 301 & "
        "while true; do sleep 0.1; done"
    )
    tree = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    other = _sentinel()
    try:
        deadline = time.monotonic() + 10
        while len(_group_members(tree.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let the setsid child start
        members = _group_members(tree.pid)
        assert tree.pid in members and len(members) >= 2
        escaped = [
            int(p) for p in os.listdir("/proc") if p.isdigit()
            and _cmdline(int(p)) == "sleep 301" and _ppid(int(p)) == tree.pid
        ]
        assert all(os.getpgid(p) != tree.pid for p in escaped)
        assert escaped, "setsid child did not start"

        t0 = time.monotonic()
        killed = stop_process_group(tree, timeout=1.0, kill_timeout=5.0)
        assert time.monotonic() - t0 < 15
        assert tree.pid in killed  # needed SIGKILL: it ignores SIGTERM
        assert tree.returncode is not None
        assert not [p for p in _group_members(tree.pid) if _running(p)]
        assert not [p for p in escaped if _running(p)]
        assert other.poll() is None, "a process outside the group was signalled"
    finally:
        for p in (tree, other):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().split(")")[-1].split()[1])
    except (OSError, ValueError):
        return -1


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


# ----------------------------------------------------------------- real local nodes


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_local_ray_head_with_second_node(local_ray_head):
    import ray

    head = local_ray_head
    assert os.getpgid(head.pid) == head.pid  # own process group
    from ray_cluster import _auth_headers

    request = urllib.request.Request(head.dashboard_url + "/api/version", headers=_auth_headers())
    with urllib.request.urlopen(request, timeout=10) as r:
        assert json.load(r)["ray_version"] == ray.__version__

    worker = head.add_worker(num_cpus=1, resources={"second_node": 1})
    assert os.getpgid(worker.pid) == worker.pid != head.pid
    other = _sentinel()
    try:
        ray.init(address=head.address)
        try:
            nodes = wait_for_alive_nodes(lambda n: len(n) == 2, timeout=60)
            second = [n for n in nodes if n["Resources"].get("second_node")]
            assert len(second) == 1

            @ray.remote(num_cpus=0, resources={"second_node": 1})
            def where():
                return ray.get_runtime_context().get_node_id()

            assert ray.get(where.remote(), timeout=60) == second[0]["NodeID"]
        finally:
            ray.shutdown()

        groups = (head.pid, worker.pid)
        head.stop()  # what the fixture's teardown does (it is idempotent)
        assert not [p for g in groups for p in _group_members(g) if _running(p)]
        assert not head.temp_dir.exists()
        assert other.poll() is None, "stopping the cluster signalled another process"
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_local_ray_head_runs_a_submitted_job(local_ray_head, tmp_path):
    """`ray job submit --working-dir` against the fixture, as users run experiments:
    the working dir is shipped, env_vars reach the job, `python` is this env's."""
    from ray_cluster import ray_cli_env, ray_executable

    (tmp_path / "job.py").write_text(
        "import os, sys, ray\n"
        "ray.init()\n"
        "print('JOB', len(ray.nodes()), os.environ['MARK'], sys.executable)\n"
    )
    result = subprocess.run(
        [
            ray_executable(), "job", "submit",
            "--address", local_ray_head.dashboard_url,
            "--working-dir", str(tmp_path),
            "--runtime-env-json", json.dumps({"env_vars": {"MARK": "from-submit"}}),
            "--", "python", "job.py",
        ],
        capture_output=True, text=True, timeout=180, env=ray_cli_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("JOB "))
    _, n_nodes, mark, exe = line.split(" ", 3)
    assert (n_nodes, mark) == ("1", "from-submit")
    assert os.path.dirname(exe) == os.path.dirname(sys.executable)


IDLE_TIMEOUT_MINUTES = 0.1  # 6 s


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_autoscaler_adds_gpu_nodes_for_pending_work_and_removes_idle_ones():
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    cluster = FakeAutoscalingCluster(
        head_resources={"CPU": 1},  # no GPU on the head, as in cluster/*.yaml
        worker_node_types={
            "gpu_worker": {
                # Fake resources: the raylet advertises them, nothing is detected.
                "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 100 * 2**20},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            }
        },
        idle_timeout_minutes=IDLE_TIMEOUT_MINUTES,
    )
    t_start = time.monotonic()
    try:
        cluster.start()
        ray.init(address=cluster.address)
        try:
            assert len(alive_nodes()) == 1
            assert ray.cluster_resources().get("GPU", 0) == 0

            # Pending work the head cannot run: two 1-GPU bundles on distinct nodes
            # (the shape of a 2-worker TorchTrainer trial with 1 GPU per worker).
            pg = placement_group([{"CPU": 1, "GPU": 1}] * 2, strategy="STRICT_SPREAD")
            ray.get(pg.ready(), timeout=120)
            nodes = wait_for_alive_nodes(lambda n: len(n) == 3, timeout=30)
            gpu_nodes = {n["NodeID"] for n in nodes if n["Resources"].get("GPU") == 1}
            assert len(gpu_nodes) == 2

            @ray.remote(num_cpus=1, num_gpus=1)
            def gpu_task():
                return ray.get_runtime_context().get_node_id(), ray.get_gpu_ids()

            results = ray.get(
                [
                    gpu_task.options(
                        scheduling_strategy=PlacementGroupSchedulingStrategy(
                            pg, placement_group_bundle_index=i
                        )
                    ).remote()
                    for i in range(2)
                ],
                timeout=60,
            )
            assert {node for node, _ in results} == gpu_nodes
            assert all(len(ids) == 1 for _, ids in results)

            # Work done: the GPU nodes go idle and are removed after the timeout,
            # not before it.
            remove_placement_group(pg)
            t_idle = time.monotonic()
            time.sleep(IDLE_TIMEOUT_MINUTES * 60 * 0.5)
            assert len(alive_nodes()) == 3, "nodes removed before the idle timeout"
            wait_for_alive_nodes(lambda n: len(n) == 1, timeout=90)
            assert time.monotonic() - t_idle >= IDLE_TIMEOUT_MINUTES * 60
            assert ray.cluster_resources().get("GPU", 0) == 0
        finally:
            ray.shutdown()
    finally:
        head_pid = cluster.head.pid if cluster.head else None
        cluster.shutdown()
    assert head_pid is None or not [p for p in _group_members(head_pid) if _running(p)]
    assert time.monotonic() - t_start < 150


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
