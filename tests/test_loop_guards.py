"""Loop guards (docs/flow/loop-guards.md) with real conductors: a self-triggering template refused at
add, a chain stopped at its depth with a record and a warning on every node, a template stopped by
its rate, and the pure cycle finder."""
from __future__ import annotations

from pathlib import Path

import pytest

from conductor import loopguard, spec
from conductor.errors import InvalidSpec, NotFound, Refused
from harness import conductor_cli, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "flow"


def template(name: str, **extra) -> dict:
    return {"name": name, "layers": [{"tasks": [{"cmd": ["true"]}]}], **extra}


def from_template(client, name: str) -> list[dict]:
    return [j for j in client.jobs(limit=0) if (j.get("source") or {}).get("template") == name]


def test_template_add_refuses_a_loop_unless_it_says_so(client, shared_etcd):
    run = conductor_cli("template", "add", str(EXAMPLES / "self-trigger.yaml"), "--etcd", shared_etcd.endpoint,
                        "--namespace", client.keys.namespace)
    assert run.returncode == 2 and "on_success" in run.stderr and "loops: true" in run.stderr, run.stderr
    assert client.templates() == [], "nothing written"
    client.add_template(template("a", triggers=["go-a"], on_success=["go-b"]))
    with pytest.raises(InvalidSpec) as err:  # closes the cycle a -> b -> a through a layer's message
        client.add_template({**template("b", triggers=["go-b"]),
                             "layers": [{"on_failure": ["go-a"], "tasks": [{"cmd": ["true"]}]}]})
    assert err.value.field == "layers[0].on_failure" and "b -> a -> b" in str(err.value)
    client.add_template(spec.load_file(str(EXAMPLES / "loop.yaml")))  # loops: true is accepted


def test_a_self_triggering_chain_is_stopped_at_its_depth_with_a_record(client, shared_etcd, start_nodes):
    nodes = start_nodes(shared_etcd.endpoint, 2)
    client.add_template(spec.load_file(str(EXAMPLES / "loop.yaml")))
    client.send("tick")
    wait_for(lambda: client.loop_guards(), 60, what="the guard stopped the chain")
    [record] = client.loop_guards()
    assert record["template"] == "ticker" and record["kind"] == "depth" and not record["stopped"]
    assert record["depth"] == 4 and "max_chain 3" in record["reason"]
    jobs = from_template(client, "ticker")
    assert sorted(j["source"].get("depth", 0) for j in jobs) == [0, 1, 2, 3]
    assert all(client.wait(j["id"], timeout=30)["state"] == "COMPLETED" for j in jobs)
    for node in nodes:  # said on every node, not only where it happened
        wait_for(lambda: "loop guard (seen by" in node.log(), 20, what=f"a warning on {node.name}")
    run = conductor_cli("template", "guards", "--etcd", shared_etcd.endpoint, "--namespace", client.keys.namespace,
                        "--user", client.user)
    assert run.returncode == 0 and "ticker  chain stopped" in run.stdout, run.stdout


def test_a_template_over_its_rate_is_stopped_until_resumed(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    client.add_template(template("burst", loops=True, max_rate=3, max_chain=100, triggers=["burst"],
                                 on_success=["burst"]))
    client.send("burst")
    wait_for(lambda: client.loop_guards(), 60, what="the rate guard stopped the template")
    [record] = client.loop_guards()
    assert record["kind"] == "rate" and record["stopped"] and "max_rate 3" in record["reason"]
    assert len(from_template(client, "burst")) == 3
    with pytest.raises(Refused, match="stopped by its loop guard"):  # a user's send is told why
        client.send("burst")
    assert len(from_template(client, "burst")) == 3, "a stopped template posts nothing"
    client.resume_template("burst")
    assert client.loop_guards() == []
    with pytest.raises(NotFound):
        client.resume_template("burst")


def test_find_cycle_follows_triggers_and_joins():
    meta = {"triggers": ["x"], "after": [], "on_success": ["y"], "on_failure": []}
    others = [{"name": "j", "meta": {"triggers": [], "after": ["y"], "on_success": [], "on_failure": ["x"]},
               "data": {}}]
    assert loopguard.find_cycle("t", meta, {}, others) == ("on_success", ["t", "j", "t"])
    assert loopguard.find_cycle("t", {**meta, "on_success": ["z"]}, {}, others) is None
