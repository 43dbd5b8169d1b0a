from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conductor.client import Client
from harness import EtcdServer, Node

_counter = itertools.count()


@pytest.fixture(scope="session")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the tests that do not stop it; each test gets its own namespace in it."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd-shared") / "data", "shared").start()
    yield server
    server.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own, for tests that stop, kill or restart it."""
    server = EtcdServer(tmp_path / "etcd" / "data", "own").start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    return f"/t{next(_counter)}-{uuid.uuid4().hex[:6]}/"


@pytest.fixture
def client(shared_etcd: EtcdServer, namespace: str) -> Iterator[Client]:
    c = Client(etcd=shared_etcd.endpoint, namespace=namespace, user="tester")
    yield c
    c.close()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    """Conductor processes a test starts; all are killed at the end whatever happened."""
    started: list[Node] = []
    yield started
    for node in started:
        node.cleanup()


@pytest.fixture
def start_nodes(nodes: list[Node], tmp_path: Path, namespace: str):
    """start_nodes(etcd_endpoint, count, **options) -> the started, ready nodes."""

    def start(endpoint: str, count: int = 1, prefix: str = "n", **options) -> list[Node]:
        new = [Node(endpoint, namespace, f"{prefix}{len(nodes) + i}", tmp_path / "nodes", **options) for i in range(count)]
        for node in new:
            nodes.append(node.start())
        for node in new:
            node.wait_ready()
        return new

    return start
