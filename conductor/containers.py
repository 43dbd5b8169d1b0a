"""Container tasks (``image`` + ``cmd``) through the Docker API: the only module importing docker.

Works with Docker and with podman's Docker-compatible service. The attempt's scratch directory is
mounted at ``/conductor`` so ``$CONDUCTOR_RESULT`` and ``$CONDUCTOR_SPAWN`` work as for processes.
A container gets the job's, layer's and task's env and the ``CONDUCTOR_*`` variables, not the
node's environment; ``cwd`` is the working directory inside the container. Its output streams to
the same local log file; kills go to the container (SIGTERM, SIGKILL after the grace period), and
the supervisor process removes it (by its name, registered before it is created) when the node
loses its lease or the conductor dies.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .executor import KillIntent, Run
from .lifecycle import Cause, Outcome, kill_cause, kill_wins
from .model import now

log = logging.getLogger("conductor.containers")

MOUNT = "/conductor"


def default_docker_host() -> str:
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    for path in ("/var/run/docker.sock", "/run/podman/podman.sock"):
        if Path(path).exists():
            return f"unix://{path}"
    return ""


def reachable(docker_host: str, timeout: float = 3.0) -> str | None:
    """The API's version string if a Docker API answers at ``docker_host``, else None."""
    if not docker_host:
        return None
    try:
        client = docker.DockerClient(base_url=docker_host, timeout=timeout)
        try:
            return str(client.version().get("Version", "?"))
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no containers here"
        return None


def container_env(env: dict[str, str]) -> dict[str, str]:
    """The task env without the node's own variables, with scratch paths inside the container."""
    out = {k: v for k, v in env.items() if k not in ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR")}
    out["CONDUCTOR_RESULT"] = f"{MOUNT}/result"
    out["CONDUCTOR_SPAWN"] = f"{MOUNT}/spawn.json"
    return out


class ContainerRun(Run):
    """One attempt of a container task."""

    def __init__(self, *args: Any, docker_host: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.docker_host = docker_host

    def start(self) -> None:
        self.dir = Path(f"{self.scratch}.d")  # mounted at /conductor: result and spawn files
        self.result_path = str(self.dir / "result")
        self.spawn_path = str(self.dir / "spawn.json")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o777)  # the container's user may not be ours
        task = self.claimed.task
        self.started = now()
        self.container: Any = None
        self._cpu: float | None = None
        self._sampled = 0.0
        self._timed_out = False
        self._timer: threading.Timer | None = None
        # registered before it exists: if this node dies while docker creates it, the supervisor
        # removes it by name
        self.name = f"conductor-{task['id']}-{task['attempts']}-{os.getpid()}"
        self.supervision.container(self.name, True)
        try:
            self.api = docker.DockerClient(base_url=self.docker_host, timeout=120)
            self.container = self.api.containers.run(
                task["image"], command=list(task["cmd"]) or None, environment=container_env(self.env),
                detach=True, name=self.name,
                labels={"conductor.task": task["id"], "conductor.node": os.uname().nodename},
                volumes={str(self.dir): {"bind": MOUNT, "mode": "rw"}}, working_dir=task.get("cwd") or None)
        except docker.errors.ImageNotFound as exc:
            self._end(self._fail(f"cannot start container: image {task['image']!r} not found ({_why(exc)})"))
            return
        except docker.errors.DockerException as exc:
            self._end(self._fail(f"cannot start container: {_why(exc)}"))
            return
        timeout = task.get("timeout")
        if timeout:
            self._timer = threading.Timer(timeout, self._time_out)
            self._timer.daemon = True
            self._timer.start()
        threading.Thread(target=self._safely, name=f"run-{self.id}", daemon=True).start()

    def _time_out(self) -> None:
        self._timed_out = True
        self._stop_container()

    def _end(self, outcome: Any) -> None:
        self.supervision.container(self.name, False)
        self._finish(outcome)

    def _safely(self) -> None:
        """Whatever goes wrong while waiting, the task gets an outcome and is never stuck."""
        try:
            self._wait()
        except Exception as exc:  # noqa: BLE001
            log.exception("task %s: supervising its container failed", self.id)
            if not self.done:
                self._end(Outcome(Cause.INTERNAL, f"conductor error while supervising its container: {exc!r}",
                                  None, self.started, now()))

    def _fail(self, reason: str) -> Any:
        return Outcome(Cause.START_FAILED, reason, None, self.started, now())

    def kill(self, reason: str = "killed", hand_back: bool = False, grace: float | None = None,
             stop: str | None = None, cause: Cause | None = None) -> None:
        why = kill_cause(stop, hand_back, cause)
        with self._lock:
            if kill_wins(why, self.intent.cause if self.intent else None):
                self.intent = KillIntent(reason, why)
        self._stop_container(grace)

    def _stop_container(self, grace: float | None = None) -> None:
        if getattr(self, "container", None) is None:
            return
        self._signal_container("SIGTERM")
        wait = self.limits.grace if grace is None else grace
        timer = threading.Timer(wait, self._signal_container, ("SIGKILL",))
        timer.daemon = True
        timer.start()

    def _signal_container(self, sig: str) -> None:
        try:
            self.container.kill(signal=sig)
        except docker.errors.DockerException:
            pass  # already gone

    def sample(self) -> None:
        """Peak memory and CPU time from the container's stats, every few seconds."""
        container = getattr(self, "container", None)
        if container is None or time.monotonic() - self._sampled < 2.0:
            return
        self._sampled = time.monotonic()
        try:
            stats = container.stats(stream=False)
        except Exception:  # noqa: BLE001 - an exited container may answer with no JSON at all
            return
        memory = stats.get("memory_stats") or {}
        self.peak_rss = max(self.peak_rss, int(memory.get("max_usage") or memory.get("usage") or 0))
        total = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
        if total:
            self._cpu = total / 1e9

    def _stream_logs(self) -> None:
        """Copy the container's output to the log file while it runs (for live tails)."""
        try:
            with open(self.log_path, "wb") as out:
                for chunk in self.container.logs(stream=True, follow=True, stdout=True, stderr=True):
                    out.write(chunk)
                    out.flush()
        except Exception:  # noqa: BLE001 - the complete logs are fetched again at the end
            pass

    def _wait(self) -> None:
        container = self.container
        streamer = threading.Thread(target=self._stream_logs, name=f"logs-{self.id}", daemon=True)
        streamer.start()
        try:
            code = int(container.wait().get("StatusCode", -1))
        except docker.errors.DockerException as exc:
            log.warning("task %s: lost track of container %s: %s", self.id, container.id[:12], _why(exc))
            code = -9
        streamer.join(timeout=2.0)
        if streamer.is_alive():  # podman's follow can hang on a container that exited at once
            try:
                Path(self.log_path).write_bytes(container.logs(stdout=True, stderr=True))
            except docker.errors.DockerException:
                pass
        ended = now()
        if self._timer:
            self._timer.cancel()
        self.sample()
        try:
            container.remove(force=True)
        except docker.errors.DockerException:
            pass
        if code > 128 and (self.intent is not None or self._timed_out):
            code = -(code - 128)  # shells report a signal as 128 + signal number
        self._end(self._outcome(code, ended, self._cpu, "timeout" if self._timed_out else None))


    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _why(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc).strip()
