"""A node whose clock is skewed must not delete history or fire schedules: the rules of
conductor.clock, and real conductors (one with its clock 8 days ahead) on a real etcd."""
from __future__ import annotations

import json
import time

import pytest

from conductor import codec, retention
from conductor.clock import BOUND, Clock, date_offset, ended_in_future, is_skewed, reference_offset
from harness import conductor_cli, wait_for

DAYS_8 = 8 * 86400.0
SKEWED = ["--clock-skew", str(DAYS_8), "--keep", "7d", "--gc-every", "1s"]
NORMAL = ["--keep", "7d", "--gc-every", "1s"]


# ---- the rules, without etcd ---------------------------------------------------------------------


def test_reference_is_the_median_of_peers_and_etcd():
    assert reference_offset([], []) is None
    assert reference_offset([], [-DAYS_8]) == -DAYS_8, "a lone node is judged by etcd"
    assert reference_offset([1.0, 2.0, 100.0], [1.5]) in (1.5, 2.0)
    assert reference_offset([0.2, -DAYS_8, 0.1], []) == 0.1, "one skewed peer of three is outvoted"


def test_an_even_count_leans_to_etcd_so_one_skewed_peer_cannot_make_a_correct_node_skewed():
    # the correct node sees the skewed peer 8 days ahead and etcd on time
    assert reference_offset([DAYS_8], [0.3]) == 0.3
    # the skewed node sees both 8 days behind
    assert reference_offset([-DAYS_8], [-DAYS_8 + 0.2]) == pytest.approx(-DAYS_8, abs=1)
    assert reference_offset([4.0, 6.0], []) == 5.0


def test_skew_bound():
    assert not is_skewed(None), "an unjudged clock is not called skewed (it is held back anyway)"
    assert not is_skewed(BOUND) and not is_skewed(-BOUND)
    assert is_skewed(BOUND + 0.1) and is_skewed(-DAYS_8)


def test_date_header_offset():
    sent = 1_700_000_000.2
    header = "Tue, 14 Nov 2023 22:13:20 GMT"  # 1_700_000_000
    assert date_offset(header, sent, sent + 0.2) == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ValueError):
        date_offset("yesterday", sent, sent)


def test_clock_holds_chores_until_judged_and_while_skewed():
    clock = Clock(shift=DAYS_8)
    assert clock.chore_time() is None, "not judged yet"
    assert clock.etcd_seen("e:1", -DAYS_8)
    assert clock.skewed and clock.chore_time() is None
    assert clock.record() == {"clock_offset": DAYS_8, "clock_skewed": True}
    assert clock.etcd_seen("e:1", 0.5), "recovered"
    assert not clock.skewed
    assert clock.chore_time() == pytest.approx(time.time() + DAYS_8 + 0.5, abs=1)
    assert not clock.peer_seen("p", time.time() + DAYS_8), "a peer on the same clock changes nothing"
    assert clock.peers_only(set()) is False and clock.etcd_seen("e:1", None), "no sample: unjudged again"
    assert clock.chore_time() is None


def test_a_job_that_ended_in_the_future_is_never_old():
    now = 1_000_000.0
    job = {"state": "COMPLETED", "ended": now - 8 * 86400}
    assert retention.is_old(job, 7 * 86400, now)
    assert not retention.is_old({**job, "ended": now + BOUND + 1}, 0, now)
    assert ended_in_future(now + BOUND + 1, now) and not ended_in_future(now + BOUND, now)
    assert not retention.is_old({"state": "RUNNING", "ended": None}, 0, now)


def test_nodes_table_cells_for_clock_and_renewal():
    from cli import render

    assert render.clock({}) == "-"
    assert render.clock({"clock_offset": 0.4, "clock_skewed": False}) == "+0.4s"
    assert render.clock({"clock_offset": DAYS_8, "clock_skewed": True}) == "[bold red]+8d SKEWED[/]"
    assert render.renewal({}) == "-", "nodes that do not publish renewals"
    assert render.renewal({"renewal_ms": 12.4, "renewal_max_ms": 40}) == "12/40ms"
    assert render.renewal({"renewal_ms": 7}) == "7/-ms"


# ---- real conductors -----------------------------------------------------------------------------


def _nodes_json(endpoint: str, namespace: str) -> dict[str, dict]:
    run = conductor_cli("nodes", "--json", "--etcd", endpoint, "--namespace", namespace)
    assert run.returncode == 0, run.stderr
    return {n["name"]: n for n in json.loads(run.stdout)}


def _fires(client, schedule: str) -> list[dict]:
    return [codec.unpack(kv.value) for kv in client.store.scan(client.keys.fire(client.user, schedule))[0]]


def test_a_node_8_days_ahead_removes_no_recent_job_and_fires_nothing(client, shared_etcd, start_nodes):
    endpoint = shared_etcd.endpoint
    [skewed] = start_nodes(endpoint, 1, prefix="ahead", extra=SKEWED)
    # alone, and judged skewed against etcd's clock, it does not take the sweeper role (retention is
    # the sweeper's chore), so that a node the cluster agrees with can take it
    wait_for(lambda: "off the cluster's reference time" in skewed.log(), 20, what="the skewed node judged")
    time.sleep(2.5)  # a few sweeps (--sweep 1)
    assert client.store.get(client.keys.leader("sweeper")) is None, "a skewed node does not lead the sweep"
    [normal] = start_nodes(endpoint, 1, prefix="ontime", extra=NORMAL)
    wait_for(lambda: (kv := client.store.get(client.keys.leader("sweeper"))) and
             codec.unpack(kv.value)["node"] == normal.name, 20, what="the correct node leads the sweep")
    jobs = [client.post({"name": f"recent{i}", "layers": [{"tasks": [{"cmd": ["true"]}]}]}) for i in range(3)]
    for job in jobs:
        assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    client.add_template({"name": "tick", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    client.add_schedule("every2", "* * * * * */2", "tick")
    # with catch-up, a clock 8 days ahead would fire its latest "missed" tick at once, 8 days early,
    # and no correct node would fire this schedule again until then
    client.add_schedule("sparse", "*/2 * * * *", "tick", catch_up=1)
    # about ten sweeps, each with retention due (--gc-every 1s), and a refresh of both node keys,
    # so the correct node has also judged its clock against the skewed peer's
    time.sleep(11)
    assert sorted(j["id"] for j in client.jobs(limit=0) if j["name"].startswith("recent")) == sorted(jobs)
    assert client.store.get(client.keys.meta("compaction")), "the correct sweeper ran retention and compaction"
    fires = _fires(client, "every2") + _fires(client, "sparse")
    assert fires and {f["node"] for f in fires} == {normal.name}, "only the correct node fires"
    assert max(f["tick"] for f in fires) <= time.time() + 2, "no tick from 8 days ahead"
    assert skewed.log().count("off the cluster's reference time") == 1, skewed.log()
    assert "Traceback" not in skewed.log() + normal.log()

    found = _nodes_json(endpoint, client.keys.namespace)
    assert found[skewed.name]["clock_skewed"] is True
    assert found[skewed.name]["clock_offset"] == pytest.approx(DAYS_8, abs=5)
    assert found[normal.name]["clock_skewed"] is False, "one skewed peer does not make the other look skewed"
    assert abs(found[normal.name]["clock_offset"]) < 5
    table = conductor_cli("nodes", "--etcd", endpoint, "--namespace", client.keys.namespace)
    assert "SKEWED" in table.stdout and "8d" in table.stdout



def test_a_lone_skewed_node_is_judged_by_etcd_and_says_so(client, shared_etcd, start_nodes):
    [lone] = start_nodes(shared_etcd.endpoint, 1, extra=SKEWED)
    found = wait_for(lambda: (n := _nodes_json(shared_etcd.endpoint, client.keys.namespace)[lone.name])
                     .get("clock_skewed") and n, 20, what="the lone node judged skewed")
    assert found["clock_offset"] == pytest.approx(DAYS_8, abs=5)  # type: ignore[index]
    wait_for(lambda: "off the cluster's reference time (the median of 0 peer(s) and 1 etcd member(s))" in lone.log(),
             10, what="the skew in the node's log")
