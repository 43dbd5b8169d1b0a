"""Rate limits: the sliding window's rules without etcd, then real conductors on one real etcd.

A start is a claim: the task's RUNNING record (its time is what the rate log records)."""
from __future__ import annotations

import random
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conductor import concurrency, ratelimit, spec
from conductor.cache import Cache
from conductor.gate import Gate
from conductor.keys import Keys
from conductor.client import Client
from conductor.errors import InvalidSpec
from harness import conductor_cli, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "flow"


# ---- rules ------------------------------------------------------------------------------------------

def test_earliest_is_the_limit_th_latest_start_plus_the_window_and_never_before_the_newest():
    assert ratelimit.earliest([], 5, 2.0) == 0.0
    assert ratelimit.earliest([10.0, 11.0], 5, 2.0) == 11.0  # room left: not before the newest
    assert ratelimit.earliest([10.0, 10.5, 11.0], 3, 2.0) == 12.0
    assert ratelimit.earliest([9.0, 10.0, 10.5, 11.0], 3, 2.0) == 12.0  # older starts do not matter


def test_record_drops_starts_older_than_the_window():
    assert ratelimit.record([1.0, 5.0, 6.0], 7.0, 2.0) == [6.0, 7.0]


def test_starts_admitted_by_the_rule_never_exceed_the_limit_in_any_window():
    """Many simulated claimers at random instants: whatever they try, the log they build holds at
    most ``limit`` starts in any window of ``per`` (the property the claim transaction keeps)."""
    rng = random.Random(7)
    for limit, per in ((1, 1.0), (5, 2.0), (3, 0.5)):
        log: list[float] = []
        now = 0.0
        for _ in range(2000):
            now += rng.expovariate(20)
            if ratelimit.allowed(log, limit, per, now):
                log = ratelimit.record(log, now, per)
                assert ratelimit.max_in_window(log, per) <= limit
        starts: list[float] = []
        now = 0.0
        for _ in range(2000):
            now += rng.expovariate(20)
            if ratelimit.allowed(starts[-limit:], limit, per, now):
                starts.append(now)
        assert ratelimit.max_in_window(starts, per) == limit


def test_reason_says_when_the_task_may_start():
    text = ratelimit.reason("api", 2, 2.0, [100.0, 101.0], 101.5)
    assert "waiting for rate key api (2 starts in the last 2s, limit 2)" in text
    assert "00:01:42.000 UTC" in text and "in 0.5s" in text


@pytest.mark.parametrize("value, field, words", [
    ({"key": "a", "limit": 5}, "rate.per", "is required"),
    ({"key": "a", "limit": 0, "per": "1s"}, "rate.limit", "from 1 to 10000"),
    ({"key": "a", "per": "1s"}, "rate.limit", "from 1 to 10000"),
    ({"key": "a", "limit": 5, "per": "soon"}, "rate.per", "must be a duration"),
    ({"key": "a", "limit": 5, "per": "0s"}, "rate.per", "more than zero"),
    ({"key": "a", "limit": 5, "per": "5ms"}, "rate.per", "at least 10ms"),
    ({"key": "a b", "limit": 5, "per": "1s"}, "rate.key", "no '/' or spaces"),
    ({"key": "api-{region}", "limit": 5, "per": "1s"}, "rate.key", "not in the task's environment"),
    ({"key": "a", "limit": 5, "per": "1s", "burst": 2}, "rate.burst", "unknown field"),
])
def test_bad_rate_values_are_refused_naming_the_field(value, field, words):
    with pytest.raises(InvalidSpec) as err:
        spec.validate_job({"layers": [{"tasks": [{"cmd": ["true"], "rate": value}]}]})
    assert err.value.field == f"layers[0].tasks[0].{field}", str(err.value)
    assert words in str(err.value)


def _gate() -> Gate:
    """A gate without etcd: its views are filled by hand (what the watches would bring)."""
    keys = Keys("/t/")
    gate = Gate(SimpleNamespace(keys=keys, name="n1", cache=Cache(keys)))  # type: ignore[arg-type]
    gate.slot_view.live = gate.rate_view.live = True
    return gate


def test_gate_compares_the_log_it_judged_even_when_the_watch_brings_a_newer_one():
    gate = _gate()
    gate.logs["api"] = ratelimit.Log([], 5)
    rate = {"key": "api", "limit": 2, "per": 60.0}
    tasks = [{"id": f"j.0.{i}", "user": "u", "rate": rate} for i in range(3)]
    gate.begin()
    assert [gate.admit(t) for t in tasks] == [True, True, False], "two per window, judged in one pick"
    gate.logs["api"] = ratelimit.Log([time.time()], 9)  # another node's start arrives meanwhile
    compare, ops = gate.txn_parts(tasks[:2], lease=1, at=round(time.time(), 3))
    assert [(c.target, c.value) for c in compare] == [("mod", 5)], "the claim fails if the log moved on"
    assert len(ops) == 1


def test_gate_plans_distinct_free_slots_and_marks_them_in_the_running_value():
    gate = _gate()
    gate.slots["db"] = {1: concurrency.Holder("db", 1, "x.0.0", "u", "n2", 0.0)}
    conc = {"key": "db", "limit": 3, "strategy": "queue"}
    tasks = [{"id": f"j.0.{i}", "user": "u", "concurrency": conc} for i in range(3)]
    gate.begin()
    assert [gate.admit(t) for t in tasks] == [True, True, False]
    for t in tasks[:2]:
        gate.mark(t)
    assert sorted(t["conc_slot"] for t in tasks[:2]) == [0, 2]
    compare, ops = gate.txn_parts(tasks[:2], lease=1, at=1.0)
    assert sorted(c.key for c in compare) == ["/t/conc/db/0", "/t/conc/db/2"]
    assert all(c.target == "version" and c.value == 0 for c in compare), "each slot must be free"
    assert all(op.lease == 1 for op in ops), "on the runner's lease"


# ---- real conductors -----------------------------------------------------------------------------------

def starts_of(client: Client, job: str, n: int) -> list[float]:
    """The claim time of every attempt (its RUNNING record)."""
    return sorted(r["at"] for i in range(n) for r in client.task(f"{job}.0.{i}")["records"] if r["state"] == "RUNNING")


@pytest.mark.timeout(300)
def test_forty_tasks_at_five_per_two_seconds_never_exceed_five_in_any_window(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 3, slots=4)
    job = client.post(spec.load_file(str(EXAMPLES / "rates.yaml")))
    waiting = wait_for(lambda: next((t["waiting"] for t in (client.task(f"{job}.0.{i}") for i in range(39, -1, -1))
                                     if t["state"] == "QUEUED" and t.get("waiting")), None), 30,
                       what="a queued task saying why it waits")
    assert "waiting for rate key api-eu" in str(waiting) and "may start at" in str(waiting)
    listed = [e for e in client.flow_keys() if e["kind"] == "rate"]
    assert listed and listed[0]["key"] == "api-eu" and listed[0]["limit"] == 5
    run = conductor_cli("keys", "--json", "--etcd", shared_etcd.endpoint, "--namespace", client.keys.namespace)
    assert run.returncode == 0 and "api-eu" in run.stdout, run.stderr
    assert client.wait(job, timeout=120)["state"] == "COMPLETED"
    starts = starts_of(client, job, 40)
    assert len(starts) == 40
    for i in range(len(starts) - 5):  # every window of 2 s: 6 starts always span at least 2 s
        assert starts[i + 5] - starts[i] >= 2.0 - 1e-6, f"6 starts within {starts[i + 5] - starts[i]:.3f}s"
    assert ratelimit.max_in_window(starts, 2.0) == 5, "the limit was used"
    # retried at the instant the window allows (a timer, not a poll): 40 starts take about 14 s
    assert starts[-1] - starts[0] < 14 + 4, f"the starts were spread over {starts[-1] - starts[0]:.1f}s"
    nodes = {client.task(f"{job}.0.{i}")["node"] for i in range(40)}
    assert len(nodes) > 1, "several nodes shared the key"
    assert not list(client.store.iter_prefix(client.keys.conc()))
    assert [kv.key for kv in client.store.iter_prefix(client.keys.rate())] == [client.keys.rate("api-eu")]
