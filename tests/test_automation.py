"""Templates, triggers and schedules: jobs started by parameters, messages and the clock, against
real etcd and several real conductors."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from conductor import codec
from conductor.client import Client
from conductor.errors import InvalidSpec, NotFound
from conductor.store import Store
from harness import conductor_cli, wait_for

ROOT = Path(__file__).resolve().parent.parent
EVERY_2S = "* * * * * */2"  # croniter: a sixth field is seconds


def template(name: str, **extra) -> dict:
    return {"name": name, "layers": [{"tasks": [{"cmd": ["true"]}]}], **extra}


def jobs_by_tick(client: Client, schedule: str) -> Counter:
    return Counter(j["source"]["tick"] for j in client.jobs(limit=0) if (j.get("source") or {}).get("schedule") == schedule)


def test_schedule_fires_once_per_tick_across_three_skewed_conductors_through_a_restart(client, shared_etcd,
                                                                                     start_nodes):
    start_nodes(shared_etcd.endpoint, 1, extra=["--clock-skew", "-0.4"])
    start_nodes(shared_etcd.endpoint, 1, extra=["--clock-skew", "0.4"])
    restarted = start_nodes(shared_etcd.endpoint, 1)[0]
    client.add_template(template("tick"))
    client.add_schedule("every2", EVERY_2S, "tick")
    start = time.time()
    time.sleep(9)
    restarted.kill9()
    time.sleep(3)
    start_nodes(shared_etcd.endpoint, 1)
    time.sleep(12)
    client.pause_schedule("every2")
    time.sleep(2.5)
    counts = jobs_by_tick(client, "every2")
    ticks = sorted(counts)
    assert len(ticks) >= 10, f"only {len(ticks)} ticks fired"
    assert set(counts.values()) == {1}, f"a tick fired more than once: {counts}"
    assert all(b - a == 2 for a, b in zip(ticks, ticks[1:])), f"a tick was missed: {ticks}"
    assert ticks[0] - start < 3
    fires = client.store.scan(client.keys.fire(client.user, "every2"))[0]
    assert len(fires) == len(ticks), "one fire key per tick (the node whose clock runs ahead wins them)"


def test_forbid_skips_ticks_while_the_previous_run_is_active(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 2)
    client.add_template({"name": "slow", "layers": [{"tasks": [{"cmd": ["sleep", "5"]}]}]})
    client.add_schedule("slowly", EVERY_2S, "slow", overlap="forbid")
    time.sleep(11)
    client.pause_schedule("slowly")
    fires = [codec.unpack(kv.value) for kv in client.store.scan(client.keys.fire(client.user, "slowly"))[0]]
    states = [f["state"] for f in fires]
    skipped = [s for s in states if s.startswith("skipped")]
    posted = [s for s in states if s == "posted"]
    assert len(skipped) >= 2 and 1 <= len(posted) <= 3, states
    assert "still RUNNING" in skipped[0]
    jobs = [j for j in client.jobs(limit=0) if (j.get("source") or {}).get("schedule") == "slowly"]
    assert len(jobs) == len(posted), "a skipped tick posts nothing"
    for a, b in zip(sorted(jobs, key=lambda j: j["created"]), sorted(jobs, key=lambda j: j["created"])[1:]):
        assert b["started"] >= a["ended"] - 0.5, "runs never overlapped"


def test_catch_up_fires_missed_ticks_once_each(client, shared_etcd, start_nodes):
    client.add_template(template("catch"))
    client.add_schedule("missed", EVERY_2S, "catch", catch_up=10)
    created = client.store.get(client.keys.schedule(client.user, "missed"))
    time.sleep(7)  # no conductor runs: three or four ticks are missed
    start_nodes(shared_etcd.endpoint, 2)
    time.sleep(2)
    client.pause_schedule("missed")
    counts = jobs_by_tick(client, "missed")
    ticks = sorted(counts)
    assert set(counts.values()) == {1}
    assert len(ticks) >= 4 and all(b - a == 2 for a, b in zip(ticks, ticks[1:]))
    assert ticks[0] - codec.unpack(created.value)["created"] <= 2


def test_missed_ticks_beyond_the_catch_up_are_skipped(client, shared_etcd, start_nodes):
    client.add_template(template("nocatch"))
    client.add_schedule("fresh", EVERY_2S, "nocatch", catch_up=0)
    time.sleep(6)
    started = time.time()
    start_nodes(shared_etcd.endpoint, 1)
    time.sleep(1)
    client.pause_schedule("fresh")
    ticks = sorted(jobs_by_tick(client, "fresh"))
    assert ticks and ticks[0] >= started - 2.5, f"missed ticks were skipped, only the current one fired: {ticks}"


def test_send_posts_one_job_per_matching_template(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    client.add_template(template("a", triggers=["build"], inputs=[{"name": "ref", "default": "main"}]))
    client.add_template(template("b", triggers=["build", "deploy"]))
    client.add_template(template("c", triggers=["deploy"]))
    run = conductor_cli("send", "build", "-p", "ref=v1", "--etcd", shared_etcd.endpoint, "--namespace",
                        client.keys.namespace, "--user", "tester")
    assert run.returncode == 0, run.stderr
    posted = run.stdout.split()
    assert len(posted) == 2
    names = sorted(client.job(j)["name"] for j in posted)
    assert names == ["job", "job"] or len(set(posted)) == 2
    sources = sorted((client.job(j)["source"]["template"], client.job(j)["source"].get("inputs")) for j in posted)
    assert sources == [("a", {"ref": "v1"}), ("b", {})]
    for j in posted:
        assert client.wait(j, timeout=20)["state"] == "COMPLETED"


def test_three_parent_join_starts_once_after_all_succeed_and_never_if_one_fails(client, shared_etcd, start_nodes,
                                                                               tmp_path):
    out = tmp_path / "joined"
    start_nodes(shared_etcd.endpoint, 2)
    for n in (1, 2, 3):
        client.add_template({"name": f"parent{n}", "inputs": [{"name": "day", "required": True},
                                                             {"name": "fail", "default": "0"}],
                             "triggers": ["go"], "on_success": [f"p{n}.ok"],
                             "layers": [{"tasks": [{"cmd": ["sh", "-c", f"sleep 0.{n}; test {{fail}} != {n}"],
                                                    "max_attempts": 1}]}]})
    client.add_template({"name": "child", "inputs": ["day"], "after": ["p1.ok", "p2.ok", "p3.ok"],
                         "layers": [{"tasks": [{"cmd": ["sh", "-c", f"echo {{day}} >> {out}"]}]}]})
    parents = client.send("go", {"day": "mon"})
    assert len(parents) == 3
    for j in parents:
        assert client.wait(j, timeout=30)["state"] == "COMPLETED"
    wait_for(lambda: out.exists() and out.read_text() == "mon\n", 20, what="the child ran")
    time.sleep(1.5)
    assert out.read_text() == "mon\n", "exactly once"
    child = [j for j in client.jobs(limit=0) if (j.get("source") or {}).get("kind") == "join"]
    assert len(child) == 1 and sorted(child[0]["source"]["parents"]) == ["p1.ok", "p2.ok", "p3.ok"]

    failing = client.send("go", {"day": "tue", "fail": "2"})
    states = sorted(client.wait(j, timeout=30)["state"] for j in failing)
    assert states == ["COMPLETED", "COMPLETED", "ERRORED"]
    time.sleep(2)
    assert out.read_text() == "mon\n", "never when a parent failed"


def test_layer_and_job_messages_chain_workflows(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    client.add_template(template("next-step", triggers=["step1.done"]))
    client.add_template(template("on-layer", triggers=["layer.done"]))
    client.add_template(template("on-fail", triggers=["it.failed"]))
    first = client.post({"name": "first", "on_success": ["step1.done"], "layers": [
        {"on_success": ["layer.done"], "tasks": [{"cmd": ["true"]}]}]})
    failing = client.post({"name": "bad", "on_failure": ["it.failed"], "on_success": ["never"],
                           "layers": [{"tasks": [{"cmd": ["false"], "max_attempts": 1}]}]})
    client.wait(first, timeout=20)
    client.wait(failing, timeout=20)
    wait_for(lambda: {j["source"].get("template") for j in client.jobs(limit=0)} >= {"next-step", "on-layer", "on-fail"},
             20, what="three chained jobs")
    chained = [j for j in client.jobs(limit=0) if (j.get("source") or {}).get("kind") == "message"]
    assert sorted(j["source"]["template"] for j in chained) == ["next-step", "on-fail", "on-layer"]
    assert {j["source"]["job"] for j in chained} == {first, failing}
    assert client.store.count(client.keys.outbox()) == 0


BAD_TEMPLATES = [
    ({"name": "t", "layers": [{"tasks": [{"cmd": ["echo", "{nope}"]}]}], "inputs": ["x"]},
     "layers[0].tasks[0].cmd[1]: uses {nope}, which is not a declared input"),
    ({"name": "t", "inputs": [{"name": "x", "colour": "red"}], "layers": [{"tasks": []}]}, "inputs.x.colour"),
    ({"name": "t", "inputs": ["1x"], "layers": [{"tasks": []}]}, "inputs.1x"),
    ({"name": "t", "inputs": ["x"], "triggers": ["bad name!"], "layers": [{"tasks": []}]}, "triggers[0]"),
    ({"name": "t", "inputs": ["x"], "layers": [{"tasks": [{"cmd": ["echo", "{x"]}]}]}, "lone '{'"),
    ({"inputs": ["x"], "layers": [{"tasks": [{"cmd": ["echo", "{x}"]}]}]}, "a template needs a name"),
]


@pytest.mark.parametrize("data,message", BAD_TEMPLATES, ids=[m for _, m in BAD_TEMPLATES])
def test_invalid_templates_are_refused_and_write_nothing(client, data, message):
    with pytest.raises(InvalidSpec) as err:
        client.add_template(data)
    assert message in str(err.value)
    assert client.store.count(client.keys.namespace) == 0


def test_invalid_parameters_are_refused_and_write_nothing(client, shared_etcd):
    client.add_template({"name": "needs", "inputs": [{"name": "day", "required": True}], "triggers": ["go"],
                         "layers": [{"tasks": [{"cmd": ["echo", "{day}"]}]}]})
    before = client.store.count(client.keys.namespace)
    common = ["--etcd", shared_etcd.endpoint, "--namespace", client.keys.namespace, "--user", "tester"]
    run = conductor_cli("post", "needs", "--template", *common)
    assert run.returncode == 2 and "inputs.day: is required" in run.stderr
    run = conductor_cli("post", "needs", "--template", "-p", "day=1", "-p", "colour=red", *common)
    assert run.returncode == 2 and "-p colour: is not an input of this template" in run.stderr
    run = conductor_cli("send", "go", "-p", "other=1", *common)
    assert run.returncode == 2 and "-p other" in run.stderr
    run = conductor_cli("send", "go", *common)
    assert run.returncode == 2 and "inputs.day" in run.stderr
    run = conductor_cli("schedule", "add", "s", "--cron", "every minute", "--template", "needs", "-p", "day=1", *common)
    assert run.returncode == 2 and "--cron" in run.stderr
    run = conductor_cli("schedule", "add", "s", "--cron", "* * * * *", "--template", "needs", *common)
    assert run.returncode == 2 and "inputs.day" in run.stderr
    run = conductor_cli("schedule", "add", "s", "--cron", "* * * * *", "--template", "absent", *common)
    assert run.returncode == 4 and "no template" in run.stderr
    assert client.store.count(client.keys.namespace) == before, "nothing was written"
    with pytest.raises(NotFound):
        client.template("absent")


def test_a_secret_never_appears_in_stored_records_or_cli_output(client, shared_etcd, start_nodes):
    secret = "s3cr3t-V4LUE-7"
    start_nodes(shared_etcd.endpoint, 1)
    client.add_template({"name": "uses-secret", "inputs": [{"name": "token", "secret": True}, "who"],
                         "triggers": ["deploy"],
                         "layers": [{"tasks": [{"cmd": ["sh", "-c", "echo token is $TOKEN; echo arg {token}; "
                                                             "echo $TOKEN > $CONDUCTOR_RESULT"],
                                                "env": {"TOKEN": "{token}"}}]}]})
    job = client.post_template("uses-secret", {"token": secret, "who": "me"})
    assert client.wait(job, timeout=20)["state"] == "COMPLETED"
    sent = client.send("deploy", {"token": secret, "who": "you"})
    for j in sent:
        client.wait(j, timeout=20)
    task = client.task(f"{job}.0.0")
    assert task["log"]["tail"] == "token is ****\narg ****\n", "the task saw the secret; the tail is masked"
    assert task["result"] == "****\n"
    common = ["--etcd", shared_etcd.endpoint, "--namespace", client.keys.namespace, "--user", "tester"]
    outputs = [conductor_cli(*args, *common) for args in (
        ["show"], ["show", "--json"], ["show", job], ["show", job, "--json"], ["show", f"{job}.0.0"],
        ["show", f"{job}.0.0", "--json"], ["logs", f"{job}.0.0"], ["result", "get", f"{job}.0.0"])]
    outputs.append(conductor_cli("template", "show", "uses-secret", *common))
    for run in outputs:
        assert run.returncode == 0, run.stderr
        assert secret not in run.stdout + run.stderr
    with Store(shared_etcd.endpoint) as store:
        for kv in store.scan(client.keys.namespace)[0]:
            if "/secrets/" in kv.key:
                continue  # the one key that holds it, for the node that runs the task
            assert secret.encode() not in kv.value, f"the secret is in {kv.key}"
    assert client.job(job)["source"]["inputs"] == {"token": "****", "who": "me"}


def test_docs_examples_run(client, shared_etcd, start_nodes, tmp_path):
    """The template examples in docs/templates.md, as a user would run them."""
    start_nodes(shared_etcd.endpoint, 1)
    common = ["--etcd", shared_etcd.endpoint, "--namespace", client.keys.namespace, "--user", "tester"]
    for name in ("report", "publish"):
        run = conductor_cli("template", "add", str(ROOT / "examples" / "templates" / f"{name}.yaml"), *common)
        assert run.returncode == 0, run.stderr
    run = conductor_cli("send", "reports.daily", "-p", "day=2026-11-22", *common)
    [report] = run.stdout.split()
    assert client.wait(report, timeout=20)["state"] == "COMPLETED"
    assert client.result(f"{report}.0.0") == b"report for 2026-11-22 as text\n"
    run = conductor_cli("send", "prices.done", "-p", "day=2026-11-22", *common)
    assert run.returncode == 0
    wait_for(lambda: any(j["name"] == "publish" for j in client.jobs(limit=0)), 20, what="the join posted publish")
    run = conductor_cli("schedule", "add", "nightly", "--cron", "0 2 * * *", "--template", "report", "-p",
                        "day=today", *common)
    assert run.returncode == 0, run.stderr
    listing = json.loads(conductor_cli("schedule", "list", "--json", *common).stdout)
    assert listing[0]["name"] == "nightly" and listing[0]["next"] > time.time()


def test_secrets_in_job_env_and_braces_in_public_values(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "mixed", "inputs": [{"name": "token", "secret": True}, "who"],
                       "env": {"JOBTOKEN": "{token}"},
                       "layers": [{"tasks": [{"cmd": ["sh", "-c", 'echo "{who}:{token}:$JOBTOKEN" > $CONDUCTOR_RESULT'],
                                              "max_attempts": 1}]}]},
                      params={"token": "hush", "who": "a{b}"})
    assert client.wait(job, timeout=20)["state"] == "COMPLETED"
    assert client.result(f"{job}.0.0") == b"a{b}:****:****\n", "both secrets were filled in, then masked"
    assert client.store.count(client.keys.secrets("tester", job)) == 1
    assert client.gc(keep=0) == [job]
    assert client.store.count(client.keys.secrets("tester", job)) == 0, "gc removes the secrets too"
