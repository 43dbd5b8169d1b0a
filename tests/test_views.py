"""What ``show`` reads and prints: paging big layers, ids people can type, piped output, and the
behaviours the docs describe (add-task with an etag, secrets in a layer's env, gc of secrets)."""
from __future__ import annotations

import json
import time

import pytest

from conductor import ids
from conductor.client import Client
from conductor.errors import Ambiguous, InvalidSpec, NotFound
from harness import conductor_cli, wait_for

BIG = 10_000


def _cli(client: Client, endpoint: str, command: str, *args: str):
    """Run ``conductor COMMAND`` (``result get``: words) on the client's etcd, namespace and user (options first: ``--``
    may end them)."""
    return conductor_cli(*command.split(), "--etcd", endpoint, "--namespace", client.keys.namespace, "--user", client.user,
                         *args)


def _job(name: str, *layer_sizes: int, cmd: list[str] | None = None) -> dict:
    return {"name": name, "layers": [{"name": f"l{i}", "order": i,
                                      "tasks": [{"name": f"t{n}", "cmd": cmd or ["true"]} for n in range(size)]}
                                     for i, size in enumerate(layer_sizes)]}


@pytest.fixture(scope="module")
def big(shared_etcd) -> tuple[str, str]:
    """(namespace, job id) of a job whose second layer has 10,000 tasks; nothing runs it."""
    namespace = f"/views-big-{time.time_ns()}/"
    with Client(etcd=shared_etcd.endpoint, namespace=namespace, user="tester") as c:
        return namespace, c.post(_job("big", 1, BIG))


@pytest.fixture
def big_client(shared_etcd, big):
    with Client(etcd=shared_etcd.endpoint, namespace=big[0], user="tester") as c:
        yield c


# ---- paging -------------------------------------------------------------------------------------

def test_show_of_a_10000_task_layer_reads_a_page_and_counts(big, big_client, shared_etcd):
    job = big[1]
    started = time.monotonic()
    tree = big_client.show(job, tasks=20)
    took = time.monotonic() - started
    assert took < 1.0, f"show read for {took:.2f}s"
    layer = tree["layer_list"][1]
    assert [t["id"] for t in layer["task_list"]] == [f"{job}.1.{n}" for n in range(20)], "number order"
    assert layer["counts"]["pending"] == BIG and layer["counts"]["total"] == BIG
    assert layer["more"] == BIG - 20 and layer["next"] == f"{job}.1.19"
    assert tree["layer_list"][0]["more"] == 0 and tree["layer_list"][0]["next"] is None

    run = _cli(big_client, shared_etcd.endpoint, "show", job)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) < 40, f"{len(lines)} lines printed"
    assert "… and 9,980 more (--all-tasks to list" in run.stdout
    assert "10,000 pending" in run.stdout


def test_paging_on_with_after_and_the_json_page(big, big_client, shared_etcd):
    job = big[1]
    layer = big_client.show(f"{job}.1", tasks=20, after=f"{job}.1.19")
    assert [t["id"] for t in layer["task_list"]] == [f"{job}.1.{n}" for n in range(20, 40)]
    assert layer["next"] == f"{job}.1.39" and layer["more"] == BIG - 40
    last = big_client.show(f"{job}.1", tasks=20, after=f"{job}.1.{BIG - 6}")
    assert len(last["task_list"]) == 5 and last["more"] == 0 and last["next"] is None
    with pytest.raises(InvalidSpec, match="after"):
        big_client.show(f"{job}.1", after=f"{job}.0.0")

    run = _cli(big_client, shared_etcd.endpoint, "show", f"{job}.1", "--json", "--tasks", "5",
               "--after", f"{job}.1.4")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert [t["id"] for t in data["task_list"]] == [f"{job}.1.{n}" for n in range(5, 10)]
    assert data["counts"]["total"] == BIG and data["more"] == BIG - 10 and data["next"] == f"{job}.1.9"


def test_all_tasks_lists_every_task(big, big_client, shared_etcd):
    run = _cli(big_client, shared_etcd.endpoint, "show", f"{big[1]}.1", "--all-tasks")
    assert run.returncode == 0, run.stderr
    assert sum(1 for line in run.stdout.splitlines() if f" {big[1]}.1." in line) == BIG
    assert "more" not in run.stdout


def test_pages_skip_tasks_of_an_add_that_never_committed(client):
    job = client.post(_job("holes", 1, 3))
    layer_id = f"{job}.1"
    layer, kv = client.board.load(client.keys.layer("tester", layer_id))
    layer["next"] = 10  # numbers 3..9 reserved by an add whose writer died before writing them
    from conductor import codec

    client.store.put(kv.key, codec.pack(layer))
    added = client.add_tasks(layer_id, [{"cmd": ["true"]}, {"cmd": ["true"]}])
    assert added == [f"{layer_id}.10", f"{layer_id}.11"]
    page = client.show(layer_id, tasks=4)
    assert [t["id"] for t in page["task_list"]] == [f"{layer_id}.{n}" for n in (0, 1, 2, 10)]
    assert page["more"] == 1 and page["next"] == f"{layer_id}.10"


# ---- ids people can type ---------------------------------------------------------------------------

def _post_at(client: Client, name: str, when: float) -> str:
    """Post a job with an id made at ``when`` (ids made in the same millisecond share 10 chars)."""
    return client.board.post(client.validate(_job(name, 1, 2)), client.user, job_id=ids.new_job_id(when))


def test_suffix_name_and_prefix_resolve_and_ambiguity_lists_the_ids(client, shared_etcd):
    now = time.time()
    first, second, other = _post_at(client, "hello", now), _post_at(client, "hello", now + 0.002), \
        _post_at(client, "other", now + 0.004)
    assert first[:8] == second[:8] == other[:8]
    for job in (first, second, other):
        assert client.locate(job[-6:])[1] == job, "the last 6 characters are enough"
    assert client.locate("hello")[1] == second, "a name is the newest job of that name"
    assert client.locate("hello.1.0")[1:] == (f"{second}.1.0", "tester")
    assert client.locate(f"{other[-6:]}.1")[1] == f"{other}.1"
    assert client.locate(other[:15])[1] == other
    with pytest.raises(Ambiguous) as exc:
        client.locate(first[:8])
    assert first in str(exc.value) and second in str(exc.value) and other in str(exc.value)
    with pytest.raises(InvalidSpec, match="nor the name of one of your jobs"):
        client.locate("no-such-name.1")
    with pytest.raises(NotFound):
        client.locate("zzzzzz.1")
    dotted = client.post(_job("v1.2", 1))
    assert client.locate("v1.2")[1] == dotted and client.locate("v1.2.0")[1] == f"{dotted}.0"

    run = _cli(client, shared_etcd.endpoint, "show", "hello.1.1", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["id"] == f"{second}.1.1"
    run = _cli(client, shared_etcd.endpoint, "show", first[:8])
    assert run.returncode == 2 and first in run.stderr and second in run.stderr, run.stderr
    run = _cli(client, shared_etcd.endpoint, "show", other[-5:])
    assert run.returncode == 0 and other in run.stdout, run.stderr


def test_names_are_the_callers_own(client, shared_etcd):
    client.post(_job("mine", 1))
    with Client(etcd=shared_etcd.endpoint, namespace=client.keys.namespace, user="someone") as theirs:
        with pytest.raises(InvalidSpec, match="nor the name of one of your jobs"):
            theirs.locate("mine")
        assert client.locate("mine")[2] == "tester"


# ---- piped output -----------------------------------------------------------------------------

def test_piped_show_keeps_whole_lines(client, shared_etcd):
    name = "a-task-whose-name-is-long-" + "x" * 150
    job = client.post({"name": "wide", "layers": [{"tasks": [{"name": name, "cmd": ["true"]}]}]})
    run = _cli(client, shared_etcd.endpoint, "show", job)
    assert run.returncode == 0, run.stderr
    assert any(name in line and f"{job}.0.0" in line for line in run.stdout.splitlines()), run.stdout


# ---- behaviours the docs describe ---------------------------------------------------------------

def test_add_task_with_the_current_etag_succeeds_and_a_stale_one_is_refused(client, shared_etcd):
    job = client.post(_job("etag", 1, 1))
    etag = client.show(f"{job}.1")["etag"]
    run = _cli(client, shared_etcd.endpoint, "add-task", f"{job}.1@{etag}", "--", "echo", "one")
    assert run.returncode == 0, run.stderr
    assert client.show(f"{job}.1")["tasks"] == 2
    run = _cli(client, shared_etcd.endpoint, "add-task", f"{job}.1@{etag}", "--", "echo", "two")
    assert run.returncode == 5, run.stderr
    layer = client.show(f"{job}.1")
    assert layer["tasks"] == 2 and len(layer["task_list"]) == 2, "nothing was added"
    assert client.store.count(client.keys.chunk("tester", f"{job}.1")) == 2, "nothing was staged either (a chunk each)"


def test_a_secret_in_a_layer_env_is_filled_at_run_time_masked_and_removed_by_gc(client, shared_etcd, start_nodes):
    secret = "s3cr3t-value-42"
    data = {"name": "secret-env", "inputs": {"token": {"secret": True}}, "env": {"JOB_TOKEN": "job:{token}"},
            "layers": [{"env": {"TOKEN": "{token}"},
                        "tasks": [{"name": "use", "shell": True,
                                   "cmd": 'echo "token is $TOKEN, $JOB_TOKEN"; '
                                          'printf %s "$TOKEN" | wc -c > $CONDUCTOR_RESULT'}]}]}
    job = client.post(data, params={"token": secret})
    secrets_key = client.keys.secrets("tester", job)
    assert client.store.get(secrets_key) is not None
    start_nodes(shared_etcd.endpoint, 1)
    assert client.wait(job, timeout=60)["state"] == "COMPLETED"
    task = client.show(f"{job}.0.0")
    assert task["result"].strip() == str(len(secret)), "the task saw the value, not the placeholder"
    assert "token is ****, job:****" in task["log"]["tail"] and secret not in task["log"]["tail"]
    assert client.env(f"{job}.0") == {"TOKEN": "{token}"}, "the layer keeps the placeholder"
    run = _cli(client, shared_etcd.endpoint, "result get", "secret-env.0.0", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["result"].strip() == str(len(secret))
    run = _cli(client, shared_etcd.endpoint, "logs", "secret-env.0.0", "--json")
    assert run.returncode == 0, run.stderr
    logged = json.loads(run.stdout)
    assert logged["id"] == f"{job}.0.0" and "token is ****" in logged["entry"]["data"]
    wait_for(lambda: client.job(job)["ended"], what="job ended")
    assert client.gc(keep=0) == [job]
    assert client.store.get(secrets_key) is None, "gc removes the job's secrets"


READ_COMMANDS = [["show"], ["nodes"], ["check"], ["logs"], ["env", "get"], ["result", "get"], ["template", "list"],
                 ["template", "show"], ["schedule", "list"], ["schedule", "show"]]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=[" ".join(c) for c in READ_COMMANDS])
def test_every_read_command_takes_json(command):
    run = conductor_cli(*command, "--help", env={"COLUMNS": "200"})
    assert run.returncode == 0, run.stderr
    assert "--json" in run.stdout
