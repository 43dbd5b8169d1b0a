"""Concurrency keys: the rules without etcd, then several real conductors on one real etcd.

What is checked from the run records: each attempt runs from its RUNNING record (the claim) to the
record that follows it (its end); at no instant do more attempts of one key run than its limit."""
from __future__ import annotations

import re

import time
from pathlib import Path

import pytest

from conductor import concurrency, spec
from conductor.client import Client
from conductor.errors import InvalidSpec
from harness import conductor_cli, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "flow"


def sh(script: str, **extra) -> dict:
    return {"cmd": ["sh", "-c", script], "shell": False, **extra}


# ---- rules ------------------------------------------------------------------------------------------

def test_spec_fills_keys_from_the_task_env_and_inherits_from_layer_and_job():
    job = spec.validate_job({"env": {"tenant": "eu"}, "concurrency": {"key": "db-{tenant}", "limit": 2},
                             "layers": [{"env": {"tenant": "us"}, "tasks": [
                                 {"cmd": ["true"]}, {"cmd": ["true"], "env": {"tenant": "fr"}},
                                 {"cmd": ["true"], "concurrency": None}]},
                                 {"tasks": [{"cmd": ["true"], "concurrency": {"key": "k", "strategy": "cancel-newest"}}]}]})
    first, second = job["layers"]
    assert [t.get("concurrency") for t in first["tasks"]] == [
        {"key": "db-us", "limit": 2, "strategy": "queue"}, {"key": "db-fr", "limit": 2, "strategy": "queue"}, None]
    assert second["tasks"][0]["concurrency"] == {"key": "k", "limit": 1, "strategy": "cancel-newest"}


@pytest.mark.parametrize("value, field, words", [
    ({"key": "db-{nope}"}, "concurrency.key", "not in the task's environment"),
    ({"key": "a/b"}, "concurrency.key", "no '/'"),
    ({"key": ""}, "concurrency.key", "is required"),
    ({"key": "a{"}, "concurrency.key", "unmatched brace"),
    ({"key": "a", "limit": 0}, "concurrency.limit", "from 1 to 100"),
    ({"key": "a", "limit": 101}, "concurrency.limit", "from 1 to 100"),
    ({"key": "a", "limit": True}, "concurrency.limit", "from 1 to 100"),
    ({"key": "a", "strategy": "newest"}, "concurrency.strategy", "must be one of"),
    ({"key": "a", "size": 3}, "concurrency.size", "unknown field"),
    ("db", "concurrency", "must be a map"),
])
def test_bad_concurrency_values_are_refused_naming_the_field(value, field, words):
    with pytest.raises(InvalidSpec) as err:
        spec.validate_job({"layers": [{"tasks": [{"cmd": ["true"], "concurrency": value}]}]})
    assert err.value.field == f"layers[0].tasks[0].{field}", str(err.value)
    assert words in str(err.value)


def test_bad_value_is_refused_by_post_before_anything_is_written(client: Client):
    with pytest.raises(InvalidSpec):
        client.post({"layers": [{"tasks": [{"cmd": ["true"], "concurrency": {"key": "x", "limit": -1}}]}]})
    assert list(client.store.iter_prefix(client.keys.namespace)) == []


def test_added_tasks_fill_the_inherited_key_from_job_layer_and_own_env(client: Client):
    job = client.post({"env": {"tenant": "eu"}, "layers": [
        {"tasks": [{"cmd": ["true"]}]},
        {"concurrency": {"key": "db-{tenant}-{zone}", "limit": 3}, "env": {"zone": "a"}, "tasks": []}]},
        paused=True)
    [added] = client.add_tasks(f"{job}.1", [{"cmd": ["true"], "env": {"zone": "b"}}])
    assert client.task(added)["concurrency"] == {"key": "db-eu-b", "limit": 3, "strategy": "queue"}
    with pytest.raises(InvalidSpec) as err:
        client.add_tasks(f"{job}.1", [{"cmd": ["true"], "rate": {"key": "api-{nope}", "limit": 1, "per": 1}}])
    assert err.value.field == "tasks[0].rate.key"


def test_free_slot_and_reason():
    assert concurrency.free_slot([0, 2], 3) == 1
    assert concurrency.free_slot([0, 1], 2) is None
    held = [concurrency.Holder("db", 1, "t2", "u", "n2", 0.0), concurrency.Holder("db", 0, "t1", "u", "n1", 0.0)]
    assert concurrency.reason("db", 2, held) == "waiting for concurrency key db (2 of 2 held by t1 on n1, t2 on n2)"
    assert concurrency.slot_of({"concurrency": {"key": "db"}, "conc_slot": 1}) == ("db", 1)
    assert concurrency.slot_of({"concurrency": {"key": "db"}}) is None


# ---- real conductors -----------------------------------------------------------------------------------

def intervals(client: Client, job: str, n: int, lost: bool = True) -> list[tuple[float, float, str]]:
    """(start, end, task) of every attempt, from the tasks' records. Without ``lost``, attempts
    ended by the loss of their node are left out: their record is written when another node
    recovers the task, after the slot went with the lease, so it says nothing of when they ended."""
    out = []
    for i in range(n):
        records = client.task(f"{job}.0.{i}")["records"]
        for r, after in zip(records, records[1:] + [None]):
            if r["state"] == "RUNNING" and (lost or after is None or "lost" not in after["reason"]):
                out.append((r["at"], after["at"] if after else float("inf"), f"{job}.0.{i}"))
    return out


def most_at_once(spans: list[tuple[float, float, str]]) -> int:
    """The most spans open at one instant (an end at t comes before a start at t)."""
    edges = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def no_flow_keys_left(client: Client) -> bool:
    return not list(client.store.iter_prefix(client.keys.conc()))


@pytest.mark.timeout(300)
def test_thirty_tasks_on_a_key_of_limit_two_never_run_more_than_two_at_once(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 3, slots=4)
    job = client.post({"name": "conc", "concurrency": {"key": "db-{tenant}", "limit": 2}, "env": {"tenant": "eu"},
                       "layers": [{"tasks": [sh("sleep 0.3") for _ in range(30)]}]})
    waiting = wait_for(lambda: next((t["waiting"] for t in (client.task(f"{job}.0.{i}") for i in range(29, -1, -1))
                                     if t["state"] == "QUEUED" and t.get("waiting")), None), 30,
                       what="a queued task saying why it waits")
    assert "waiting for concurrency key db-eu (2 of 2 held by" in str(waiting)
    keys = client.flow_keys()
    assert keys and keys[0]["key"] == "db-eu" and keys[0]["kind"] == "concurrency" and keys[0]["limit"] == 2
    assert client.wait(job, timeout=120)["state"] == "COMPLETED"
    spans = intervals(client, job, 30)
    assert len(spans) == 30
    assert most_at_once(spans) == 2, "never more than the limit, and the limit was used"
    assert len({client.task(f"{job}.0.{i}")["node"] for i in range(30)}) > 1, "several nodes took part"
    wait_for(lambda: no_flow_keys_left(client), 5, what="no slot left behind")


@pytest.mark.timeout(300)
def test_a_kill9_holder_frees_its_slot_within_ttl_and_the_limit_holds(client, shared_etcd, start_nodes, tmp_path):
    ttl = 2
    marks = tmp_path / "marks"
    nodes = start_nodes(shared_etcd.endpoint, 3, ttl=ttl, slots=2)
    script = (f"echo start $CONDUCTOR_TASK_ID $(date +%s.%N) >> {marks}; "
              f"trap 'echo end $CONDUCTOR_TASK_ID $(date +%s.%N) >> {marks}; exit 143' TERM; "
              f"sleep 1.5 & wait $!; echo end $CONDUCTOR_TASK_ID $(date +%s.%N) >> {marks}")
    job = client.post({"name": "conc9", "layers": [{"concurrency": {"key": "db", "limit": 2}, "tasks": [
        sh(script, max_attempts=1) for _ in range(30)]}]})

    def holders() -> list[dict]:
        found = client.flow_keys()
        return found[0]["holders"] if found else []

    wait_for(lambda: len(holders()) == 2, 30, what="two holders")
    victim_name = holders()[0]["node"]
    victim = next(n for n in nodes if n.name == victim_name)
    victim.kill9()
    killed = time.time()
    wait_for(lambda: len(holders()) == 2 and all(h["node"] != victim_name for h in holders()), ttl + 4,
             what="both slots held by live nodes again")
    assert time.time() - killed <= ttl + 2 + 0.5, "the dead node's slot came back within TTL + 2 s"
    assert client.wait(job, timeout=200)["state"] == "COMPLETED"
    spans = _spans(marks)
    assert most_at_once(spans) <= 2, "no more than 2 processes of the key at once, the kill included"
    spans = intervals(client, job, 30, lost=False)
    assert len(spans) >= 30 and most_at_once(spans) <= 2
    wait_for(lambda: no_flow_keys_left(client), 5, what="no slot left behind")


@pytest.mark.timeout(120)
def test_cancel_in_progress_stops_the_holder_and_runs_the_newcomer(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 2, slots=2)
    conc = {"key": "deploy", "limit": 1, "strategy": "cancel-in-progress"}
    old = client.post({"name": "old", "layers": [{"tasks": [sh("sleep 60", concurrency=conc)]}]})
    wait_for(lambda: client.task(f"{old}.0.0")["state"] == "RUNNING", 20)
    new = client.post({"name": "new", "layers": [{"tasks": [sh("sleep 0.2", concurrency=conc)]}]})
    assert client.wait(new, timeout=30)["state"] == "COMPLETED"
    stopped = client.task(f"{old}.0.0")
    assert stopped["state"] == "SKIPPED"
    assert "cancel-in-progress" in stopped["records"][-1]["reason"] and new in stopped["records"][-1]["reason"]
    spans = intervals(client, old, 1) + intervals(client, new, 1)
    assert most_at_once(spans) == 1
    wait_for(lambda: no_flow_keys_left(client), 5, what="no slot left behind")


@pytest.mark.timeout(120)
def test_cancel_newest_skips_the_newcomer_at_once(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 2, slots=2)
    conc = {"key": "backup", "limit": 1, "strategy": "cancel-newest"}
    old = client.post({"name": "old", "layers": [{"tasks": [sh("sleep 60", concurrency=conc)]}]})
    wait_for(lambda: client.task(f"{old}.0.0")["state"] == "RUNNING", 20)
    posted = time.time()
    new = client.post({"name": "new", "layers": [{"tasks": [sh("sleep 0.2", concurrency=conc)]}]})
    assert client.wait(new, timeout=30)["state"] == "COMPLETED"  # a skipped task counts as done
    skipped = client.task(f"{new}.0.0")
    assert skipped["state"] == "SKIPPED" and skipped["attempts"] == 0
    assert "cancel-newest" in skipped["records"][-1]["reason"] and "backup" in skipped["records"][-1]["reason"]
    assert skipped["records"][-1]["at"] - posted < 5
    assert client.task(f"{old}.0.0")["state"] == "RUNNING", "the holder runs on"
    client.kill(old)
    wait_for(lambda: no_flow_keys_left(client), 20, what="the killed holder's slot freed at once")


@pytest.mark.timeout(120)
def test_the_docs_example_runs_and_keys_lists_it(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 2, slots=3)
    job = client.post(spec.load_file(str(EXAMPLES / "concurrency.yaml")))
    wait_for(lambda: any(e["key"] == "db-eu" and e["held"] == 2 for e in client.flow_keys()), 30)

    run = conductor_cli("keys", "--etcd", shared_etcd.endpoint, "--namespace", client.keys.namespace)
    assert run.returncode == 0, run.stderr
    # a slot is handed from one task to the next every second: the CLI may catch one of the gaps
    assert "db-eu" in run.stdout and re.search(r"\b[12] of 2 held", run.stdout), run.stdout
    assert client.wait(job, timeout=60)["state"] == "COMPLETED"
    assert most_at_once(intervals(client, job, 6)) <= 2
    wait_for(lambda: no_flow_keys_left(client), 5)


@pytest.mark.parametrize("page, example", [("concurrency.md", "concurrency.yaml"), ("rates.md", "rates.yaml")])
def test_the_docs_show_the_example_files_the_tests_post(page, example):
    text = (Path(__file__).resolve().parent.parent / "docs" / "flow" / page).read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    shown = [b for b in blocks if b.startswith(f"# examples/flow/{example}\n")]
    assert shown == [(EXAMPLES / example).read_text()], f"docs/flow/{page} must show examples/flow/{example} as it is"


def _spans(marks: Path) -> list[tuple[float, float, str]]:
    """(start, end, task) of every process, from the lines the tasks wrote themselves."""
    open_: dict[str, float] = {}
    spans = []
    for line in marks.read_text().split("\n"):
        if line:
            what, task, at = line.split()
            if what == "start":
                open_[task] = float(at)
            else:
                spans.append((open_.pop(task), float(at), task))
    assert not open_, f"every process that started also ended: {open_}"
    return spans


@pytest.mark.timeout(300)
def test_the_limit_and_the_rate_hold_through_an_etcd_restart(etcd, namespace, start_nodes, tmp_path):
    """etcd stops mid-run and comes back: slots and permits are kept in etcd (the slots on the
    runners' leases, which etcd keeps across a restart), so no more than the limit ever run and no
    window sees more than the rate, and nothing is left behind."""
    marks = tmp_path / "marks"
    script = (f"echo start $CONDUCTOR_TASK_ID $(date +%s.%N) >> {marks}; sleep 0.5; "
              f"echo end $CONDUCTOR_TASK_ID $(date +%s.%N) >> {marks}")
    start_nodes(etcd.endpoint, 2, ttl=8, slots=4)
    with Client(etcd=etcd.endpoint, namespace=namespace, user="tester") as client:
        job = client.post({"name": "through-restart", "layers": [
            {"concurrency": {"key": "db", "limit": 2}, "rate": {"key": "api", "limit": 3, "per": "2s"},
             "tasks": [sh(script) for _ in range(16)]}]})
        wait_for(lambda: marks.exists() and marks.read_text().count("end") >= 3, 60, what="some tasks done")
    etcd.stop()
    time.sleep(2.5)  # running tasks go on; their finishes and every new claim wait for etcd
    etcd.start()
    with Client(etcd=etcd.endpoint, namespace=namespace, user="tester") as client:
        assert client.wait(job, timeout=120)["state"] == "COMPLETED"
        spans = _spans(marks)
        assert sorted(t for _, _, t in spans) == sorted(f"{job}.0.{i}" for i in range(16)), "each ran once"
        assert most_at_once(spans) <= 2, "never more than the limit, etcd's restart included"
        starts = sorted(s for s, _, _ in intervals(client, job, 16))  # the claims, which the rate counts
        assert len(starts) == 16 and all(later - first >= 2.0 for first, later in zip(starts, starts[3:])), \
            "no 2 s window saw more than 3 starts"
        wait_for(lambda: no_flow_keys_left(client), 10, what="no slot left behind")
