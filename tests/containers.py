"""A Docker API for container tests: podman's service on a socket of our own, and a busybox image
made without a registry (podman import of a rootfs holding Debian's static busybox)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

IMAGE = "localhost/conductor-test-busybox:latest"
TOOLS = ["sh", "echo", "cat", "sleep", "true", "false", "env", "ls", "wc", "head", "id", "date", "seq", "pwd"]

CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def start_podman(base: Path) -> tuple[str, subprocess.Popen[bytes], dict[str, str]]:
    """(DOCKER_HOST, the service process, env to run podman with). Fails loudly if podman is missing."""
    podman = shutil.which("podman")
    busybox = shutil.which("busybox") or "/bin/busybox"
    assert podman, "podman is not installed: scripts/setup --containers installs it"
    assert Path(busybox).exists(), "busybox-static is not installed: scripts/setup --containers installs it"
    base.mkdir(parents=True, exist_ok=True)
    conf = base / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    rootfs = base / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").mkdir(exist_ok=True)
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for tool in TOOLS:
        link = rootfs / "bin" / tool
        if not link.exists():
            link.symlink_to("busybox")
    archive = base / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    subprocess.run([podman, "import", str(archive), IMAGE], check=True, capture_output=True, env=env)
    sock = base / "podman.sock"
    service = subprocess.Popen([podman, "system", "service", "--time=0", f"unix://{sock}"], env=env,
                               stdout=open(base / "service.log", "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not sock.exists():
        assert service.poll() is None, (base / "service.log").read_text()
        assert time.monotonic() < deadline, "podman service did not open its socket"
        time.sleep(0.1)
    return f"unix://{sock}", service, env
