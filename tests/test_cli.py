"""The command line as a user runs it: real processes, real etcd, exit codes and output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conductor.store import Store
from harness import conductor_cli, free_port, wait_for

BAD_JOBS = [
    ("name: x\n", "layers: is required"),
    ("layers: {}\n", "layers: must be a list, not a map"),
    ("layers: []\n", "layers: must hold at least one layer"),
    ("layers:\n  - tasks:\n      - name: a\n", "layers[0].tasks[0].cmd: is required"),
    ("layers:\n  - tasks:\n      - cmd: echo hi\n", "layers[0].tasks[0].cmd: must be a list of strings"),
    ("layers:\n  - tasks:\n      - cmd: []\n", "layers[0].tasks[0].cmd: must not be empty"),
    ("layers:\n  - tasks:\n      - cmd: [echo, {a: 1}]\n", "layers[0].tasks[0].cmd[1]: must be a string, not a map"),
    ("layers:\n  - tasks:\n      - cmd: [true]\n        max_attempts: 0\n",
     "layers[0].tasks[0].max_attempts: must be at least 1"),
    ("layers:\n  - tasks:\n      - cmd: [true]\n        timeout: soon\n", "layers[0].tasks[0].timeout: must be a duration"),
    ("layers:\n  - tasks:\n      - cmd: [true]\n        cmdd: [x]\n", "layers[0].tasks[0].cmdd: unknown field"),
    ("layers:\n  - on_error: ignore\n    tasks: []\n", "layers[0].on_error: must be one of fail, continue"),
    ("layers:\n  - order: first\n", "layers[0].order: must be a whole number"),
    ("env: [A]\nlayers:\n  - tasks: []\n", "env: must be a map"),
    ("layers:\n  - tasks:\n      - cmd: [true]\n        env: {A: [1]}\n",
     "layers[0].tasks[0].env.A: must be a string or a number"),
    ("layers:\n  - tasks:\n      - cmd: [true]\n        needs: {labels: {gpu: [1]}}\n", "needs.labels.gpu: must be a string"),
    ("layers:\n  - tasks:\n      - cmd: [true]\n        shell: yes please\n", "layers[0].tasks[0].shell: must be true or false"),
    ("layers: [\n", "not valid YAML"),
    ('{"layers": [}', "not valid JSON"),
    ("- just\n- a list\n", "must hold a map"),
    ("", "is empty"),
]


@pytest.mark.parametrize("text,message", BAD_JOBS, ids=[m for _, m in BAD_JOBS])
def test_bad_job_files_are_refused_naming_the_field_and_write_nothing(text, message, shared_etcd, namespace, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    run = conductor_cli("post", str(path), "--etcd", shared_etcd.endpoint, "--namespace", namespace)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr.replace("\n", " "), run.stderr
    assert run.stdout == ""
    with Store(shared_etcd.endpoint) as store:
        assert store.count(namespace) == 0, "nothing was written"


def test_missing_file_and_stdin(shared_etcd, namespace, tmp_path):
    run = conductor_cli("post", str(tmp_path / "nope.yaml"), "--etcd", shared_etcd.endpoint, "--namespace", namespace)
    assert run.returncode == 2 and "no such file" in run.stderr
    run = conductor_cli("post", "-", "--etcd", shared_etcd.endpoint, "--namespace", namespace,
                        input='{"name": "from-stdin", "layers": [{"tasks": [{"cmd": ["true"]}]}]}')
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.strip()) == 16


def test_post_wait_show_nodes_and_json(shared_etcd, namespace, start_nodes, tmp_path):
    start_nodes(shared_etcd.endpoint, 1)
    common = ["--etcd", shared_etcd.endpoint, "--namespace", namespace]
    good = tmp_path / "good.yaml"
    good.write_text("name: good\nlayers:\n  - tasks:\n      - name: hi\n        shell: true\n"
                    "        cmd: 'echo hello > $CONDUCTOR_RESULT; echo logged'\n")
    run = conductor_cli("post", str(good), "--wait", *common)
    assert run.returncode == 0, run.stderr
    job = run.stdout.strip()
    assert "COMPLETED" in run.stderr
    listing = json.loads(conductor_cli("show", "--json", *common).stdout)
    assert [(j["id"], j["state"], j["counts"]["completed"], j["counts"]["total"]) for j in listing] == [(job, "COMPLETED", 1, 1)]
    tree = json.loads(conductor_cli("show", job[:8], "--json", *common).stdout)
    assert tree["kind"] == "job" and tree["layer_list"][0]["task_list"][0]["state"] == "COMPLETED"
    assert isinstance(tree["etag"], int)
    task = json.loads(conductor_cli("show", f"{job}.0.0", "--json", *common).stdout)
    assert task["result"] == "hello\n" and "logged" in task["log"]["tail"]
    human = conductor_cli("show", f"{job}.0.0", *common).stdout
    assert "history" in human and "COMPLETED" in human and "hello" in human
    human = conductor_cli("show", job, *common).stdout
    assert "hi" in human and "COMPLETED" in human
    nodes = json.loads(conductor_cli("nodes", "--json", *common).stdout)
    assert [n["name"] for n in nodes] == ["n0"] and nodes[0]["slots"] == 2 and "memory" in nodes[0]

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nlayers:\n  - tasks:\n      - cmd: [false]\n        max_attempts: 1\n")
    run = conductor_cli("post", str(bad), "--wait", *common)
    assert run.returncode == 1 and "ERRORED" in run.stderr


def test_unknown_ids_and_unreachable_etcd(shared_etcd, namespace):
    common = ["--etcd", shared_etcd.endpoint, "--namespace", namespace]
    run = conductor_cli("show", "0000000000000000", *common)
    assert run.returncode == 4 and "no job" in run.stderr
    run = conductor_cli("show", "not-an-id!", *common)
    assert run.returncode == 2 and "not a job, layer or task id" in run.stderr
    run = conductor_cli("show", "--etcd", f"127.0.0.1:{free_port()}", "--namespace", namespace, timeout=30)
    assert run.returncode == 3 and "etcd unavailable" in run.stderr


def test_run_starts_a_local_etcd_when_none_answers(tmp_path, namespace):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "conductor", "run", "--local-port", str(port), "--namespace",
                             namespace, "--data-dir", str(tmp_path / "data"), "--name", "solo"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        wait_for(lambda: lines.append(proc.stdout.readline()) or "ready:" in "".join(lines), 30)
        assert "started a local etcd" in "".join(lines) and str(tmp_path / "data" / "etcd") in "".join(lines)
        common = ["--etcd", f"127.0.0.1:{port}", "--namespace", namespace]
        job = tmp_path / "j.json"
        job.write_text(json.dumps({"name": "local", "layers": [{"tasks": [{"cmd": ["true"]}]}]}))
        assert conductor_cli("post", str(job), "--wait", *common).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    wait_for(lambda: conductor_cli("nodes", "--etcd", f"127.0.0.1:{port}", timeout=20).returncode == 3, 15,
             what="the local etcd stopped with its conductor")


def test_run_without_etcd_binary_says_how_to_install(tmp_path):
    env = {"PATH": str(tmp_path)}  # no etcd on this PATH
    run = subprocess.run([sys.executable, "-m", "conductor", "run", "--local-port", str(free_port()),
                          "--data-dir", str(tmp_path / "d")], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=30)
    assert run.returncode == 7
    assert "apt-get install etcd-server" in run.stderr and "--etcd" in run.stderr


def test_check_validates_without_etcd(tmp_path):
    root = Path(__file__).resolve().parent.parent
    for example in sorted((root / "examples").glob("*.y*ml")):
        run = conductor_cli("check", str(example))
        assert run.returncode == 0, f"{example}: {run.stderr}"
