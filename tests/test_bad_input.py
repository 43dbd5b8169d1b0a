"""Bad input is refused before anything is written, and a post is all-or-nothing.

Hostile job files go through the real ``conductor check`` and ``conductor post``: both must exit 2
with the same one-line message naming the field and the reason, no traceback, and nothing in
etcd. The rules themselves get unit tests without etcd; posting and cleaning up half-written
jobs run against real etcd.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from conductor import codec, ids, partial, spec, templates
from conductor.board import Board
from conductor.errors import InvalidSpec, Refused, StoreError
from conductor.ops import Put
from harness import conductor_cli, tasks_in, wait_for

TASK = {"cmd": ["true"]}


def _job(**fields: Any) -> str:
    return json.dumps({"name": "j", "layers": [{"tasks": [TASK]}], **fields})


def _task(**fields: Any) -> str:
    return json.dumps({"name": "j", "layers": [{"tasks": [{**TASK, **fields}]}]})


def _yaml_task(line: str) -> str:
    return f"name: j\nlayers:\n  - tasks:\n      - cmd: [\"true\"]\n        {line}\n"


def _bomb() -> str:
    """A few KB of nested aliases that expand to a million tasks."""
    lines = ["t0: &t0 {cmd: [\"true\"]}"]
    for i in range(1, 7):
        lines.append(f"t{i}: &t{i} [" + ", ".join([f"*t{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\nlayers:\n  - tasks: *t6\n"


def _big_stored(tmp: Path) -> str:
    """A 60 MB file of 600 tasks with 100 KB arguments: each fits exec, the job is too big to store."""
    arg = "x" * 100_000
    return json.dumps({"name": "big", "layers": [{"tasks": [{"cmd": ["echo", arg]} for _ in range(600)]}]})


# (id, file text, what the one line of stderr must say)
HOSTILE: list[tuple[str, Callable[[Path], str], str]] = [
    ("deep-json", lambda _: "[" * 5000 + "]" * 5000, "nested more than 64 levels"),
    ("deep-json-in-map", lambda _: '{"layers": ' + "[" * 5000 + "]" * 5000 + "}", "nested more than 64 levels"),
    ("deep-json-100", lambda _: '{"layers": ' + "[" * 100 + "]" * 100 + "}", "layers: is nested more than 64"),
    ("deep-yaml-flow", lambda _: "layers: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels"),
    ("deep-yaml-block", lambda _: "layers:\n" + "".join("  " * i + "-\n" for i in range(1, 5000)),
     "nested more than 64 levels"),
    ("env-10MB", lambda _: _job(env={"BIG": "x" * 10_000_000}), "env.BIG: is 9.5 MiB"),
    ("env-1MB", lambda _: _job(env={f"V{i}": "x" * 100_000 for i in range(11)}),
     "layers[0].tasks[0].env: argv and environment"),
    ("env-2MB", lambda _: _job(env={f"V{i}": "x" * 100_000 for i in range(21)}),
     "layers[0].tasks[0].env: argv and environment"),
    ("arg-200KB", lambda _: _task(cmd=["echo", "x" * 200_000]), "layers[0].tasks[0].cmd[1]: is 195.3 KiB"),
    ("layer-env-stored", lambda _: json.dumps({"layers": [{"env": {f"V{i}": "x" * 100_000 for i in range(6)},
                                                           "tasks": []}]}),
     "layers[0]: would be stored as"),
    ("dup-task", lambda _: json.dumps({"layers": [{"tasks": [{"name": "a", **TASK}, {"name": "a", **TASK}]}]}),
     "layers[0].tasks[1].name: task name 'a' is also the name of layers[0].tasks[0]"),
    ("dup-layer", lambda _: json.dumps({"layers": [{"name": "l", "tasks": []}, {"name": "l", "tasks": []}]}),
     "layers[1].name: layer name 'l' is also the name of layers[0]"),
    ("dup-json-key", lambda _: '{"name": "a",\n "layers": [{"tasks": [{"cmd": ["true"]}]}],\n "name": "b"}',
     "line 3: key 'name' appears twice"),
    ("dup-yaml-key", lambda _: "name: a\nlayers:\n  - tasks: []\n    tasks: []\n", "line 4: key 'tasks' appears twice"),
    ("file-60MB", _big_stored, "a job may store at most 32.0 MiB"),
    ("surrogate-name", lambda _: '{"name": "\\ud800", "layers": [{"tasks": [{"cmd": ["true"]}]}]}',
     "name: is not valid UTF-8 text"),
    ("surrogate-env", lambda _: '{"layers": [{"tasks": [{"cmd": ["true"], "env": {"A": "x\\udfff"}}]}]}',
     "layers[0].tasks[0].env.A: is not valid UTF-8 text"),
    ("surrogate-cmd", lambda _: '{"layers": [{"tasks": [{"cmd": ["echo", "\\ud83d"]}]}]}',
     "layers[0].tasks[0].cmd[1]: is not valid UTF-8 text"),
    ("digits-json", lambda _: '{"layers": [{"tasks": [{"cmd": ["true"], "priority": ' + "9" * 5001 + "}]}]}",
     "layers[0].tasks[0].priority: is a number of 5001 digits"),
    ("digits-yaml", lambda _: _yaml_task("priority: " + "9" * 5001), "line 5: a number of 5001 digits is too long"),
    ("timeout-nan", lambda _: _yaml_task("timeout: .nan"), "layers[0].tasks[0].timeout: is not a finite number"),
    ("timeout-NaN-json", lambda _: '{"layers": [{"tasks": [{"cmd": ["true"], "timeout": NaN}]}]}',
     "layers[0].tasks[0].timeout: is not a finite number"),
    ("timeout-inf", lambda _: _yaml_task("timeout: .inf"), "layers[0].tasks[0].timeout: is not a finite number"),
    ("timeout-Infinity", lambda _: '{"timeout": Infinity, "layers": [{"tasks": [{"cmd": ["true"]}]}]}',
     "timeout: is not a finite number"),
    ("timeout-1e308", lambda _: _yaml_task("timeout: 1e308"), "layers[0].tasks[0].timeout: is too large"),
    ("timeout-31d", lambda _: _yaml_task("timeout: 31d"), "layers[0].tasks[0].timeout: is too large"),
    ("timeout-neg-zero", lambda _: _yaml_task("timeout: -0.0"), "layers[0].tasks[0].timeout: must be more than zero"),
    ("memory-huge", lambda _: _yaml_task("needs: {memory: 2000T}"), "needs.memory: is too large"),
    ("memory-digits", lambda _: _yaml_task('needs: {memory: "' + "9" * 400 + 'G"}'), "needs.memory: is too large"),
    ("priority-1e308", lambda _: _yaml_task("priority: 1e308"), "priority: must be a whole number"),
    ("attempts-nan", lambda _: _yaml_task("max_attempts: .nan"), "max_attempts: is not a finite number"),
    ("order-inf", lambda _: "layers:\n  - order: -.inf\n    tasks: []\n", "layers[0].order: is not a finite number"),
    ("slots-nan", lambda _: _yaml_task("needs: {slots: .nan}"), "needs.slots: is not a finite number"),
    ("env-number-nan", lambda _: _yaml_task("env: {X: .nan}"), "layers[0].tasks[0].env.X: is not a finite number"),
    ("alias-bomb", lambda _: _bomb(), "aliases expand"),
]


@pytest.mark.parametrize("make,message", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_files_fail_check_and_post_alike_and_write_nothing(make, message, shared_etcd, namespace, tmp_path,
                                                                   client):
    path = tmp_path / "job.json"
    path.write_text(make(tmp_path), encoding="utf-8", errors="surrogatepass")
    check = conductor_cli("check", str(path))
    post = conductor_cli("post", str(path), "--etcd", shared_etcd.endpoint, "--namespace", namespace)
    for run in (check, post):
        assert run.returncode == 2, run.stderr[-2000:]
        assert "Traceback" not in run.stderr, run.stderr[-2000:]
        assert len(run.stderr.splitlines()) == 1, run.stderr[-2000:]
        assert message in run.stderr, run.stderr[-2000:]
        assert run.stdout == ""
    assert check.stderr.splitlines()[0] == post.stderr.splitlines()[0]
    assert client.store.count(client.keys.namespace) == 0, "nothing was written"


def test_a_file_over_64_mib_is_refused_before_reading(shared_etcd, namespace, tmp_path, client):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(70 * 1024 * 1024)  # sparse: the size is what is checked
    for args in (["check", str(path)], ["post", str(path), "--etcd", shared_etcd.endpoint, "--namespace", namespace]):
        run = conductor_cli(*args)
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert "is 70.0 MiB (73400320 bytes); a job file may be at most 64.0 MiB" in run.stderr
    assert client.store.count(client.keys.namespace) == 0


# ---- the rules, without etcd ------------------------------------------------------------------

def _refused(text: str) -> str:
    with pytest.raises(InvalidSpec) as caught:
        data = spec.parse_text(text, "f")
        spec.check_stored(templates.instantiate(data, {})[0], "tester", {"kind": "file", "path": "f"})
    return str(caught.value)


def test_duplicate_json_key_names_the_line_of_the_second_in_the_same_object():
    text = ('{"layers": [{"tasks": [\n {"name": "a", "cmd": ["x"]},\n {"name": "b",\n'
            '  "cmd": ["y"], "name": "c"}]}]}')
    assert _refused(text) == "file: f: line 4: key 'name' appears twice in one object"


def test_yaml_merge_keys_may_be_overridden():
    text = "base: &b {cmd: [\"true\"], priority: 1}\nlayers:\n  - tasks:\n      - <<: *b\n        priority: 2\n"
    data = spec.parse_text(text.replace("base: &b", "x: &b"), "f")
    data.pop("x")
    assert spec.validate_job(data)["layers"][0]["tasks"][0]["priority"] == 2


def test_aliases_that_do_not_explode_are_fine():
    text = "t: &t {cmd: [\"true\"]}\nlayers:\n  - tasks: [" + ", ".join(["*t"] * 500) + "]\n"
    data = spec.parse_text(text, "f")
    assert len(data["layers"][0]["tasks"]) == 500


def test_an_alias_inside_itself_is_refused():
    assert "an alias refers to a node that contains it" in _refused("a: &a [*a]\nlayers: []\n")


def test_exec_limits_count_the_merged_env_with_task_values_overriding():
    env = {f"V{i}": "x" * 100_000 for i in range(10)}  # about 1,000,030 bytes: fits
    job = {"env": env, "layers": [{"env": {"V0": "y"}, "tasks": [{"cmd": ["a" * 40_000], "env": {"V1": "z"}}]}]}
    spec.validate_job(job)  # V0 and V1 are overridden: what exec gets is small enough
    job["layers"][0] = {"tasks": [{"cmd": ["a" * 60_000]}]}
    with pytest.raises(InvalidSpec, match=r"^layers\[0\]\.tasks\[0\]\.env: argv and environment"):
        spec.validate_job(job)
    with pytest.raises(InvalidSpec, match=r"^layers\[0\]\.env\.X: is 128\.0 KiB \(131073 bytes\)"):
        spec.validate_job({"layers": [{"env": {"X": "x" * (128 * 1024 - 2)}, "tasks": []}]})
    spec.validate_job({"layers": [{"env": {"X": "x" * (128 * 1024 - 3)}, "tasks": []}]})  # X=...\0 is 128 KiB


def test_too_many_tasks_are_refused_before_they_are_validated():
    job = {"layers": [{"tasks": [None] * 200_000}, {"tasks": [None] * 50_001}]}
    with pytest.raises(InvalidSpec, match="layers: hold 250001 tasks, the limit for one job is 250000"):
        spec.validate_job(job)


def test_a_job_given_as_a_map_gets_the_files_checks():
    with pytest.raises(InvalidSpec, match=r"^layers\[0\]\.tasks\[0\]\.cmd\[0\]: is not valid UTF-8"):
        spec.validate_job({"layers": [{"tasks": [{"cmd": ["\udc80"]}]}]})
    with pytest.raises(InvalidSpec, match=r"^layers\[0\]\.tasks\[0\]\.timeout: is a number of more than 64"):
        spec.validate_job({"layers": [{"tasks": [{"cmd": ["x"], "timeout": 10 ** 5000}]}]})
    with pytest.raises(InvalidSpec, match="nested more than 64 levels"):
        deep: list[Any] = []
        for _ in range(10_000):
            deep = [deep]
        spec.validate_job({"layers": deep})


def test_sizes_and_durations_at_their_caps():
    assert spec.parse_duration("30d", "t", spec.MAX_TIMEOUT) == 30 * 86400
    assert spec.parse_size("1TiB", "m") == 1024 ** 4
    assert spec.parse_size(1024 ** 5, "m") == 1024 ** 5
    with pytest.raises(InvalidSpec, match="too large"):
        spec.parse_size(1024 ** 5 + 1, "m")
    with pytest.raises(InvalidSpec, match="too large"):
        spec.parse_size(10 ** 400, "m")


# ---- posting is all-or-nothing -----------------------------------------------------------------

def _bulky(n: int = 120, value: int = 10_000) -> dict[str, Any]:
    """A job whose stored size is well over one etcd request (1.5 MiB)."""
    tasks = [{"name": f"t{i}", "cmd": ["true"], "env": {"PAD": "x" * value}} for i in range(n)]
    return {"name": "bulky", "layers": [{"name": "a", "tasks": tasks}, {"name": "b", "tasks": [TASK]}]}


def _posted_tasks(client: Any, user: str, prefix: str = "") -> int:
    """How many tasks the chunks of ``user`` (of layers starting with ``prefix``) hold."""
    return sum(len(codec.unpack(kv.value)["specs"]) for kv in client.store.iter_prefix(client.keys.chunks(user, prefix)))


def _job_keys(client: Any, job_id: str) -> list[str]:
    return [kv.key for kv in client.store.iter_prefix(client.keys.namespace, keys_only=True) if job_id in kv.key]


def test_a_job_bigger_than_one_request_is_posted_whole(shared_etcd, namespace, tmp_path, client):
    path = tmp_path / "bulky.json"
    path.write_text(json.dumps(_bulky()))
    run = conductor_cli("post", str(path), "--etcd", shared_etcd.endpoint, "--namespace", namespace)
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    user = _owner(client, job_id)
    assert _posted_tasks(client, user, job_id + ".") == 121
    assert client.store.count(client.keys.chunks(user, job_id + ".")) > 2, "in more chunks than one request holds"
    assert client.store.count(client.keys.pending()) == 0, "the head deleted the pending marker"
    job = codec.unpack(client.store.get(client.keys.job(user, job_id)).value)
    assert job["state"] == "RUNNING" and [s["tasks"] for s in job["layers"]] == [120, 1]
    assert len(tasks_in(client.store, client.keys, "QUEUED", user, job_id + ".0.")) == 120, "its first layer is queued"


def _owner(client: Any, job_id: str) -> str:
    return client.board.owner(job_id)


class _Failing(Board):
    """A board whose chunked post fails (or dies) after ``after`` chunks."""

    def __init__(self, board: Board, after: int, error: BaseException):
        super().__init__(board.store, board.keys)
        self.after, self.error, self.chunks = after, error, 0

    def _write_chunk(self, compare: Any, ops: Any) -> Any:
        if self.chunks >= self.after:
            raise self.error
        self.chunks += 1
        return super()._write_chunk(compare, ops)

    def _write_many(self, compare: Any, chunks: Any) -> Any:
        room = max(0, self.after - self.chunks)  # the chunks before the failure are sent together
        done = super()._write_many(compare, chunks[:room])
        self.chunks += len(done)
        if room < len(chunks):
            raise self.error
        return done


class _Killed(BaseException):
    """Stands for kill -9: nothing after it runs in the poster."""


def test_a_failed_chunk_removes_what_the_post_wrote(client):
    board = _Failing(client.board, after=2, error=StoreError("etcdserver: request is too large"))
    job = spec.validate_job(_bulky(300))  # four requests: three chunks and the head
    with pytest.raises(StoreError, match="could not be posted, and what was written of it is removed"):
        board.post(job, "tester")
    assert board.chunks == 2
    assert client.store.count(client.keys.namespace) == 0


def test_a_post_that_dies_half_way_is_collected_and_a_whole_job_is_not(client):
    whole = client.board.post(spec.validate_job(_bulky()), "tester")
    before = sorted(_job_keys(client, whole))
    board = _Failing(client.board, after=2, error=_Killed())
    with pytest.raises(_Killed):
        board.post(spec.validate_job(_bulky(300)), "tester")
    pending = [kv.key for kv in client.store.iter_prefix(client.keys.pending(), keys_only=True)]
    assert len(pending) == 1
    dead = pending[0].rsplit("/", 1)[1]
    assert len(_job_keys(client, dead)) > 2 and client.store.get(client.keys.job("tester", dead)) is None
    assert partial.collect(client.board, grace=60) == [], "a young marker is left alone"
    assert partial.collect(client.board, grace=0) == [dead]
    assert _job_keys(client, dead) == []
    assert sorted(_job_keys(client, whole)) == before, "a complete job is never touched"


class _OneChunkRefused(Board):
    """A board whose first chunk sent together with others is one etcd refuses (too large): it
    fails at once, while the others are still on their way."""

    sent: list[int] = []

    def _write_many(self, compare: Any, chunks: Any) -> Any:
        self.sent = [len(ops) for ops in chunks]
        bad = chunks[0] + [Put(self.keys.task("tester", "too-large"), b"x" * 2_000_000)]
        return super()._write_many(compare, [bad, *chunks[1:]])


def test_a_chunk_refused_among_those_in_flight_leaves_nothing(client):
    board = _OneChunkRefused(client.board.store, client.keys)
    with pytest.raises(StoreError, match="could not be posted, and what was written of it is removed"):
        board.post(spec.validate_job(_bulky(700)), "tester")  # some seven chunks: six sent together
    assert len(board.sent) >= 4, "several chunks were in flight with the refused one"
    assert client.store.count(client.keys.namespace) == 0, "every chunk ended before the removal"


class _Overtaken(Board):
    """A board whose job id is posted by someone else just as its chunks go out together."""

    def _write_many(self, compare: Any, chunks: Any) -> Any:
        self.store.put(compare[0].key, codec.pack({"stands": "for the other post's job"}))
        return super()._write_many(compare, chunks)


def test_chunks_in_flight_write_nothing_once_the_job_id_is_taken(client):
    board = _Overtaken(client.board.store, client.keys)
    job, job_id = spec.validate_job(_bulky(700)), ids.new_job_id()
    assert board.post(job, "tester", job_id=job_id) == job_id, "a given id posted by another: that is the job"
    written = _posted_tasks(client, "tester")
    assert 0 < written < 200, f"only the first transaction's tasks were written, not {written}"
    with pytest.raises(Refused, match="already exists"):
        _Overtaken(client.board.store, client.keys).post(job, "tester")  # an id of its own taken: refused


def test_collect_drops_a_stale_marker_of_a_job_that_exists(client):
    job_id = client.board.post(spec.validate_job(_bulky(5, 10)), "tester")
    marker = client.keys.pending("tester", job_id)
    client.store.put(marker, codec.pack({"user": "tester", "at": time.time() - 3600}))
    before = len(_job_keys(client, job_id))
    assert partial.collect(client.board, grace=0) == []
    assert client.store.get(marker) is None and len(_job_keys(client, job_id)) == before - 1


# ---- cron rules that never fire ------------------------------------------------------------------

def test_a_cron_rule_that_never_fires(shared_etcd, namespace, client, start_nodes):
    common = ["--etcd", shared_etcd.endpoint, "--namespace", namespace, "--user", "tester"]
    run = conductor_cli("schedule", "add", "feb30", "--cron", "0 0 30 2 *", "--template", "t", *common)
    assert run.returncode == 2 and "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
    assert "--cron: '0 0 30 2 *' never fires" in run.stderr
    assert client.store.count(client.keys.namespace) == 0
    # one stored before add refused such rules: listed as never, warned about once, others still fire
    client.add_template({"name": "t", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    client.add_schedule("every-second", "* * * * * *", "t")
    client.store.put(client.keys.schedule(client.user, "feb30"), codec.pack({
        "name": "feb30", "cron": "0 0 30 2 *", "template": "t", "params": {}, "overlap": "allow", "catch_up": 0,
        "paused": False, "by": "tester", "created": time.time()}))
    run = conductor_cli("schedule", "list", *common)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "feb30  0 0 30 2 * UTC  -> t  never fires" in run.stdout
    node = start_nodes(shared_etcd.endpoint, 1)[0]
    wait_for(lambda: "schedule feb30 fails" in node.log(), timeout=30, what="the broken schedule said once")
    fired = client.store.count(client.keys.fire(client.user, "every-second"))
    wait_for(lambda: client.store.count(client.keys.fire(client.user, "every-second")) >= fired + 3, timeout=30,
             what="the good schedule fires on while the broken one is stored")
    log = node.log()
    assert "Traceback" not in log
    assert log.count("schedule feb30 fails") == 1, log


def test_a_parameter_that_is_not_text_is_refused_even_for_a_secret():
    data = {"inputs": [{"name": "tok", "secret": True}], "layers": [{"tasks": [{"cmd": ["echo", "{tok}"]}]}]}
    with pytest.raises(InvalidSpec, match=r"^-p tok: is not valid UTF-8 text"):
        templates.instantiate(data, {"tok": "\udc80"})


def test_a_job_with_more_layers_than_one_request_holds_is_posted_whole(client):
    job_id = client.board.post(spec.validate_job({"layers": [{"tasks": [TASK]} for _ in range(300)]}), "tester")
    k = client.keys
    assert client.store.count(k.layer("tester", job_id + ".")) == 300
    assert _posted_tasks(client, "tester", job_id + ".") == 300
    assert client.store.count(k.pending()) == 0
    job = codec.unpack(client.store.get(k.job("tester", job_id)).value)
    assert len(job["layers"]) == 300 and job["state"] == "RUNNING"


def test_kill9_of_a_real_post_mid_way_is_collected(shared_etcd, namespace, tmp_path, client):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(_bulky(2500)))  # about 25 MB: some twenty chunks
    proc = subprocess.Popen([sys.executable, "-m", "conductor", "post", str(path), "--etcd", shared_etcd.endpoint,
                             "--namespace", namespace, "--user", "tester"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: client.store.count(client.keys.chunks("tester")) > 0 or proc.poll() is not None,
                 timeout=60, interval=0.01, what="the post's first chunks")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    first = next(client.store.iter_prefix(client.keys.chunks("tester"), keys_only=True), None)
    assert first is not None, proc.stderr.read() if proc.stderr else ""
    job_id = first.key.rsplit("/", 2)[1].split(".")[0]  # .../chunks/<job>.<n>/<first>
    if client.store.get(client.keys.job("tester", job_id)) is not None:
        pytest.skip("the post finished before it could be killed")
    assert client.store.get(client.keys.pending("tester", job_id)) is not None, "a dead post leaves its marker"
    assert partial.collect(client.board, grace=0) == [job_id]
    assert client.store.count(client.keys.namespace) == 0


def test_the_sweeper_collects_a_post_that_died_half_way(client, shared_etcd, start_nodes):
    """The same killed post, and a real conductor's sweeper removes it once the grace has passed."""
    board = _Failing(client.board, after=2, error=_Killed())
    with pytest.raises(_Killed):
        board.post(spec.validate_job(_bulky(300)), "tester")
    [marker] = [kv.key for kv in client.store.iter_prefix(client.keys.pending(), keys_only=True)]
    dead = marker.rsplit("/", 1)[1]
    assert _job_keys(client, dead)
    start_nodes(shared_etcd.endpoint, 1, extra=["--partial-grace", "1s"])
    wait_for(lambda: _job_keys(client, dead) == [] and client.store.get(marker) is None, 30,
             what="the sweeper removed the half-written post")
