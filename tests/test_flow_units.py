"""Caching and compensation as pure rules (no etcd): spec validation, cache keys and freshness,
which compensation layers run in which order, and the settle plan that starts them."""
from __future__ import annotations

from pathlib import Path

import pytest

from conductor import compensation, footprint, layerplan, spec, states, taskcache
from conductor.errors import InvalidSpec

ROOT = Path(__file__).resolve().parent.parent


def job_with(**extra) -> dict:
    return {"name": "j", "layers": [{"name": "a", "tasks": [{"cmd": ["true"]}]},
                                    {"name": "b", "order": 1, "tasks": [{"cmd": ["true"]}]}], **extra}


# ---- caching: the spec ------------------------------------------------------------------------

def test_cache_is_inherited_from_job_and_layer_and_the_task_wins():
    job = spec.validate_job({"name": "j", "env": {"C": "1"}, "cache": {"key": "job-{C}", "ttl": "1h"}, "layers": [
        {"name": "a", "cache": {"key": "layer-{C}", "ttl": "2h"}, "tasks": [
            {"cmd": ["true"]}, {"cmd": ["true"], "cache": {"key": "own", "ttl": 5}}]},
        {"name": "b", "tasks": [{"cmd": ["true"]}]}]})
    first, own = job["layers"][0]["tasks"]
    assert first["cache"] == {"key": "layer-{C}", "ttl": 7200.0}
    assert own["cache"] == {"key": "own", "ttl": 5.0}
    assert job["layers"][1]["tasks"][0]["cache"] == {"key": "job-{C}", "ttl": 3600.0}


@pytest.mark.parametrize("cache, field, words", [
    ("x", "layers[0].tasks[0].cache", "must be a map"),
    ({"ttl": "1h"}, "layers[0].tasks[0].cache.key", "is required"),
    ({"key": "k"}, "layers[0].tasks[0].cache.ttl", "is required"),
    ({"key": "k", "ttl": "0s"}, "layers[0].tasks[0].cache.ttl", "more than zero"),
    ({"key": "k", "ttl": "soon"}, "layers[0].tasks[0].cache.ttl", ""),
    ({"key": "k", "ttl": "400d"}, "layers[0].tasks[0].cache.ttl", ""),
    ({"key": "k", "ttl": 1, "keep": 1}, "layers[0].tasks[0].cache.keep", "unknown field"),
    ({"key": "a{b", "ttl": 1}, "layers[0].tasks[0].cache.key", "lone"),
    ({"key": "build-{COMMIT}", "ttl": 1}, "layers[0].tasks[0].cache.key", "{COMMIT}, which is not in the task's env"),
    ({"key": "", "ttl": 1}, "layers[0].tasks[0].cache.key", "must not be empty"),
])
def test_bad_cache_values_are_refused_naming_the_field(cache, field, words):
    with pytest.raises(InvalidSpec) as err:
        spec.validate_job({"name": "j", "layers": [{"tasks": [{"cmd": ["true"], "cache": cache}]}]})
    assert err.value.field == field
    assert words in err.value.reason


def test_cache_placeholders_come_from_the_merged_env_and_braces_can_be_literal():
    job = spec.validate_job({"name": "j", "env": {"A": "1"}, "layers": [{"env": {"B": "2"}, "tasks": [
        {"cmd": ["true"], "env": {"C": "3"}, "cache": {"key": "{A}-{B}-{C}-{{x}}", "ttl": 1}}]}]})
    task = job["layers"][0]["tasks"][0]
    assert taskcache.fill(task["cache"]["key"], {"A": "1", "B": "2", "C": "3"}) == "1-2-3-{x}"
    assert taskcache.fill("{A}-{Z}", {"A": "1"}) is None


def test_stored_names_have_no_slash_and_long_keys_are_hashed():
    assert taskcache.stored_name("build-a/b c") == "build-a%2Fb%20c"
    assert taskcache.stored_name("x" * 300).startswith("sha256-")


def test_an_entry_counts_within_both_ttls():
    entry = {"ended": 1000.0, "ttl": 60.0}
    assert taskcache.fresh(entry, 60, 1060)
    assert not taskcache.fresh(entry, 60, 1060.5)
    assert not taskcache.fresh(entry, 10, 1011), "the task's own ttl, when shorter"
    assert not taskcache.fresh(entry, 600, 1100), "the writer's ttl, when shorter (the sweeper removes it)"


def test_no_cache_is_a_job_field():
    assert spec.validate_job(job_with(no_cache=True))["no_cache"] is True
    with pytest.raises(InvalidSpec) as err:
        spec.validate_job(job_with(no_cache="yes"))
    assert err.value.field == "no_cache"


# ---- compensation: the spec -------------------------------------------------------------------

@pytest.mark.parametrize("compensate, field, words", [
    ("x", "compensate", "must be a list"),
    ([{"for": "zzz", "tasks": []}], "compensate[0].for", "names no layer"),
    ([{"for": "a", "order": 3, "tasks": []}], "compensate[0].order", "not allowed"),
    ([{"for": "a", "on_failure": ["m"], "tasks": []}], "compensate[0].on_failure", "not allowed"),
    ([{"name": "b", "tasks": []}], "compensate[0].name", "used twice"),
    ([{"for": "a", "tasks": [{"cmd": "true"}]}], "compensate[0].tasks[0].cmd", "must be a list"),
    ([{"for": "a", "tasks": [{"cmd": ["true"], "cache": {"key": "{NOPE}", "ttl": 1}}]}],
     "compensate[0].tasks[0].cache.key", "not in the task's env"),
    ([{"tasks": []}] * 21, "compensate", "limit is 20"),
])
def test_bad_compensation_is_refused_naming_the_field(compensate, field, words):
    with pytest.raises(InvalidSpec) as err:
        spec.validate_job(job_with(compensate=compensate))
    assert err.value.field == field
    assert words in err.value.reason


def test_the_examples_are_valid():
    for name in ("cache.yaml", "compensate.yaml"):
        spec.validate_job(spec.load_file(str(ROOT / "examples" / "flow" / name)))


# ---- compensation: the rule -------------------------------------------------------------------

def summaries(*layers: tuple[str, int, str]) -> list[dict]:
    return [{"id": f"J.{i}", "name": name, "order": order, "state": state}
            for i, (name, order, state) in enumerate(layers)]


def test_order_is_reverse_of_the_completed_layers_then_the_ones_naming_none():
    regular = summaries(("a", 0, "COMPLETED"), ("b", 0, "COMPLETED"), ("c", 1, "COMPLETED"), ("d", 2, "ERRORED"))
    comps = [{"index": 4, "for": "a"}, {"index": 5, "for": "c"}, {"index": 6, "for": None},
             {"index": 7, "for": "b"}, {"index": 8, "for": "d"}, {"index": 9, "for": "a"}]
    assert compensation.order(regular, comps) == [5, 7, 4, 9, 6]


def test_step_waits_for_the_failure_then_runs_one_layer_at_a_time():
    layers = [{"index": 2, "for": "a"}, {"index": 3, "for": "b"}, {"index": 4, "for": None}]
    job = {"state": "RUNNING", "layers": summaries(("a", 0, "COMPLETED"), ("b", 1, "RUNNING")),
           "compensation": {"state": "PENDING", "reason": "", "queue": [], "layers": layers}}
    assert compensation.step(job, {2: "PENDING", 3: "PENDING", 4: "PENDING"}) is None
    job["state"], job["layers"][1]["state"] = "ERRORED", "ERRORED"
    first = compensation.step(job, {2: "PENDING", 3: "PENDING", 4: "PENDING"})
    assert first == compensation.Step("RUNNING", "the job failed", start=2, skip=(3,), queue=(2, 4))
    job["compensation"].update(state="RUNNING", queue=[2, 4], reason="the job failed")
    assert compensation.step(job, {2: "RUNNING", 3: "SKIPPED", 4: "PENDING"}) is None
    assert compensation.step(job, {2: "ERRORED", 3: "SKIPPED", 4: "PENDING"}).start == 4
    last = compensation.step(job, {2: "ERRORED", 3: "SKIPPED", 4: "COMPLETED"})
    assert (last.state, last.start) == ("ERRORED", None)


def test_a_completed_job_skips_its_compensation():
    job = {"state": "COMPLETED", "layers": summaries(("a", 0, "COMPLETED")),
           "compensation": {"state": "PENDING", "reason": "", "queue": [], "layers": [{"index": 1, "for": "a"}]}}
    assert compensation.step(job, {1: "PENDING"}) == compensation.Step("SKIPPED", "the job completed", skip=(1,))


def test_failure_env_names_the_failed_task_or_the_kill():
    job = {"layers": [{"id": "J.0", "name": "deploy"}], "records": [{"reason": "killed by ann"}, {"reason": "x"}]}
    failed = {"id": "J.0.1", "name": "app", "layer": "J.0", "reason": "exit 3 on n1"}
    env = compensation.failure_env({"compensates": "deploy"}, failed, job)
    assert env == {"CONDUCTOR_FAILED_TASK": "J.0.1", "CONDUCTOR_FAILED_TASK_NAME": "app",
                   "CONDUCTOR_FAILED_LAYER": "deploy", "CONDUCTOR_FAILED_REASON": "exit 3 on n1",
                   "CONDUCTOR_COMPENSATES": "deploy"}
    assert compensation.failure_env({}, None, job)["CONDUCTOR_FAILED_REASON"] == "killed by ann"


# ---- the settle plan --------------------------------------------------------------------------

def built(data: dict) -> tuple[dict, dict[int, dict]]:
    job, layers, _ = footprint.build(spec.validate_job(data), "u", "J", {"kind": "api"})
    return job, {layer["index"]: layer for layer in layers}


def queued(layers: dict[int, dict], i: int) -> dict[int, dict]:
    """As Board.enqueue leaves a started layer."""
    return {**layers, i: {**layers[i], "enqueued": True}}


def test_the_plan_starts_compensation_when_the_job_fails_and_keeps_it_active():
    job, layers = built(spec.load_file(str(ROOT / "examples" / "flow" / "compensate.yaml")))
    assert [c["name"] for c in job["compensation"]["layers"]] == ["unconfigure", "deprovision", "notify"]
    assert [s["name"] for s in job["layers"]] == ["provision", "configure", "deploy"]
    p = layerplan.plan(job, layers, {}, "n", 1.0)  # the post: the first layer starts, nothing else
    assert [t.index for t in p.started] == [0]
    job, layers = p.job, {**layers, **p.layers}
    for i in (0, 1):
        layers[i] = {**layers[i], "state": states.COMPLETED}
    layers[2] = {**layers[2], "state": states.RUNNING, "enqueued": True}
    job["layers"] = [{**s, "state": layers[i]["state"]} for i, s in enumerate(job["layers"])]
    job["state"] = states.RUNNING
    p = layerplan.plan(job, layers, {"J.2": layerplan.LayerCounts(errored=1)}, "n", 2.0)
    assert p.job["state"] == states.ERRORED
    assert p.job["compensation"]["state"] == states.RUNNING and p.compensation == states.RUNNING
    assert p.job["compensation"]["queue"] == [3, 4, 5]
    assert [t.index for t in p.started] == [3], "unconfigure first: configure completed last"
    assert p.active is None, "active/<job> stays while the compensation runs"
    job, layers = p.job, queued({**layers, **p.layers}, 3)
    p = layerplan.plan(job, layers, {"J.3": layerplan.LayerCounts()}, "n", 3.0)
    assert [(t.index, t.state) for t in p.ended] == [(3, states.COMPLETED)]
    assert [t.index for t in p.started] == [4]
    job, layers = p.job, queued({**layers, **p.layers}, 4)
    p = layerplan.plan(job, layers, {"J.4": layerplan.LayerCounts()}, "n", 4.0)
    job, layers = p.job, queued({**layers, **p.layers}, 5)
    p = layerplan.plan(job, layers, {"J.5": layerplan.LayerCounts(errored=1)}, "n", 5.0)
    assert p.job["compensation"]["state"] == states.ERRORED and p.job["state"] == states.ERRORED
    assert p.active == "delete"
    assert p.job["records"][-1]["reason"] == "compensation ERRORED: 1 compensation layer(s) errored"


@pytest.mark.parametrize("page, example", [("caching.md", "cache.yaml"), ("compensation.md", "compensate.yaml")])
def test_the_docs_show_the_examples_the_tests_post(page, example):
    text = (ROOT / "docs" / "flow" / page).read_text()
    assert "```yaml\n" + (ROOT / "examples" / "flow" / example).read_text() + "```" in text


def test_template_inputs_fill_compensation_layers_and_reach_cache_keys_through_env():
    from conductor import templates

    job, _, _ = templates.instantiate({
        "name": "t", "inputs": ["commit"], "env": {"COMMIT": "{commit}"},
        "layers": [{"name": "a", "cache": {"key": "build-{COMMIT}", "ttl": "1d"}, "tasks": [{"cmd": ["make"]}]}],
        "compensate": [{"for": "a", "tasks": [{"cmd": ["undo", "{commit}"]}]}]}, {"commit": "abc"})
    assert job["compensate"][0]["tasks"][0]["cmd"] == ["undo", "abc"]
    task = job["layers"][0]["tasks"][0]
    assert taskcache.fill(task["cache"]["key"], job["env"]) == "build-abc"
