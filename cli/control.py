"""Commands that steer running work: pause, unpause, kill, retry, skip, add-task, env, result, logs, gc."""
from __future__ import annotations

import json as jsonlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from conductor.errors import InvalidSpec

from . import render
from .common import Etcd, Json, Namespace, User, _client, app

Ids = Annotated[list[str], typer.Argument(metavar="ID...", help="Job, layer or task ids (mixed); ID@ETAG "
                                          "refuses the change if the object moved on from that etag.")]
Etag = Annotated[Optional[int], typer.Option(help="Refuse the change unless the object's etag is this "
                                             "(one id only; ID@ETAG for several).")]
Grace = Annotated[float, typer.Option(min=0, help="Seconds between SIGTERM and SIGKILL.")]

env_app = typer.Typer(no_args_is_help=True, help="Read or change the env of a job, layer or task.")
result_app = typer.Typer(no_args_is_help=True, help="Read or set a task's result.")
app.add_typer(env_app, name="env")
app.add_typer(result_app, name="result")


def _report(results: list[Any], json: bool) -> None:
    if json:
        render.print_json([{"id": r.id, "done": r.done, "etag": r.etag} for r in results])
        return
    for r in results:
        print(f"{r.id}: {r.done}" + (f" (etag {r.etag})" if r.etag else ""))


def _act(action: str, ids: list[str], etag: int | None, etcd: Any, namespace: Any, user: Any, json: bool,
         **options: Any) -> None:
    """Run one Client control call (pause, kill, ...) on the ids and report each id's outcome."""
    if etag is not None and len(ids) > 1:
        raise InvalidSpec("--etag", "goes with one id; give ID@ETAG for each of several")
    with _client(etcd, namespace, user) as client:
        _report(getattr(client, action)(*ids, etag=etag, **options), json)


@app.command()
def pause(ids: Ids, etag: Etag = None, etcd: Etcd = None, namespace: Namespace = None, user: User = None,
          json: Json = False) -> None:
    """Stop new claims of what the ids cover; running tasks go on."""
    _act("pause", ids, etag, etcd, namespace, user, json)


@app.command()
def unpause(ids: Ids, etag: Etag = None, etcd: Etcd = None, namespace: Namespace = None, user: User = None,
            json: Json = False) -> None:
    """Let paused jobs, layers or tasks run again."""
    _act("unpause", ids, etag, etcd, namespace, user, json)


@app.command()
def kill(ids: Ids, grace: Grace = 10.0, etag: Etag = None, etcd: Etcd = None, namespace: Namespace = None,
         user: User = None, json: Json = False) -> None:
    """Stop running tasks wherever they run and mark what the ids cover ERRORED (reason killed)."""
    _act("kill", ids, etag, etcd, namespace, user, json, grace=grace)


@app.command()
def retry(ids: Ids, etag: Etag = None, etcd: Etcd = None, namespace: Namespace = None, user: User = None,
          json: Json = False,
          no_cache: Annotated[bool, typer.Option("--no-cache", help="Run them even when a cached result of "
                                                 "their cache key exists.")] = False) -> None:
    """Run ERRORED (or killed) tasks again, whatever their attempt count."""
    _act("retry", ids, etag, etcd, namespace, user, json, no_cache=no_cache)


@app.command()
def skip(ids: Ids, grace: Grace = 10.0, etag: Etag = None, etcd: Etcd = None, namespace: Namespace = None,
         user: User = None, json: Json = False) -> None:
    """Mark tasks SKIPPED (done, for the layers after); running ones are killed first."""
    _act("skip", ids, etag, etcd, namespace, user, json, grace=grace)


@app.command("add-task")
def add_task(layer_id: Annotated[str, typer.Argument(metavar="LAYER_ID")],
             cmd: Annotated[Optional[list[str]], typer.Argument(metavar="-- CMD...", help="The task's argv.")] = None,
             file: Annotated[Optional[str], typer.Option(help="A YAML or JSON list of task specs (- for stdin).")] = None,
             name: Annotated[Optional[str], typer.Option(help="The task's name.")] = None,
             shell: Annotated[bool, typer.Option(help="Run CMD (one string) through /bin/sh.")] = False,
             etag: Etag = None, etcd: Etcd = None, namespace: Namespace = None, user: User = None,
             json: Json = False) -> None:
    """Add tasks to a layer that has not started (refused once it has)."""
    from conductor import spec

    if file and cmd:
        raise InvalidSpec("cmd", "give a command or --file, not both")
    if file:
        data = spec.parse_any(sys.stdin.read() if file == "-" else _read(file), file)
        tasks = data.get("tasks") if isinstance(data, dict) else data
        if not isinstance(tasks, list):
            raise InvalidSpec("file", "must hold a list of tasks (or a map with a 'tasks' list)")
    elif cmd:
        task: dict[str, Any] = {"cmd": " ".join(cmd) if shell else cmd, "shell": shell}
        if name:
            task["name"] = name
        tasks = [task]
    else:
        raise InvalidSpec("cmd", "is required: add-task LAYER_ID -- CMD... (or --file)")
    with _client(etcd, namespace, user) as client:
        added = client.add_tasks(layer_id, tasks, etag=etag)
        render.print_json(added) if json else print("\n".join(added))


def _read(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise InvalidSpec("file", f"{path}: no such file")
    return p.read_text()


def _own_id(some_id: str | None) -> str:
    found = some_id or os.environ.get("CONDUCTOR_TASK_ID")
    if not found:
        raise InvalidSpec("id", "is required (inside a task it defaults to $CONDUCTOR_TASK_ID)")
    return found


@env_app.command("get")
def env_get(some_id: Annotated[Optional[str], typer.Argument(metavar="[ID]")] = None, etcd: Etcd = None,
            namespace: Namespace = None, user: User = None, json: Json = False) -> None:
    """Print the env of a job, layer or task (inside a task: its own)."""
    with _client(etcd, namespace, user) as client:
        env = client.env(_own_id(some_id))
        if json:
            render.print_json(env)
        else:
            for k, v in sorted(env.items()):
                print(f"{k}={v}")


@env_app.command("set")
def env_set(some_id: Annotated[str, typer.Argument(metavar="ID")],
            pairs: Annotated[Optional[list[str]], typer.Argument(metavar="NAME=VALUE...")] = None,
            unset: Annotated[Optional[list[str]], typer.Option(help="Remove this variable.")] = None,
            etag: Etag = None, etcd: Etcd = None, namespace: Namespace = None, user: User = None,
            json: Json = False) -> None:
    """Change env variables; applies to tasks that have not started yet."""
    changes: dict[str, str | None] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidSpec("env", f"{pair!r} is not NAME=VALUE")
        changes[key] = value
    for key in unset or []:
        changes[key] = None
    if not changes:
        raise InvalidSpec("env", "give NAME=VALUE pairs or --unset NAME")
    with _client(etcd, namespace, user) as client:
        _report([client.set_env(some_id, changes, etag=etag)], json)


@result_app.command("get")
def result_get(task_id: Annotated[Optional[str], typer.Argument(metavar="[TASK]")] = None, etcd: Etcd = None,
               namespace: Namespace = None, user: User = None, json: Json = False) -> None:
    """Print a task's result bytes (inside a task: its own); exit 1 if it has none."""
    with _client(etcd, namespace, user) as client:
        if json:
            task = client.task(_own_id(task_id))
            render.print_json({"id": task["id"], "result": task["result"], "etag": task.get("result_etag")})
            if task["result"] is None:
                raise typer.Exit(1)
            return
        data = client.result(_own_id(task_id))
        if data is None:
            raise typer.Exit(1)
        sys.stdout.buffer.write(data)


@result_app.command("set")
def result_set(args: Annotated[Optional[list[str]], typer.Argument(metavar="[TASK] VALUE",
                                                                  help="VALUE, or - for stdin.")] = None,
               file: Annotated[Optional[str], typer.Option(help="Read the value from this file.")] = None,
               etag: Etag = None, etcd: Etcd = None, namespace: Namespace = None, user: User = None,
               json: Json = False) -> None:
    """Set a task's result (inside a task, TASK defaults to its own)."""
    value: bytes | str
    task_id: str | None
    args = args or []
    if file:
        task_id, value = (args[0] if args else None), Path(file).read_bytes()
    elif len(args) == 1:
        task_id, value = None, args[0]
    elif len(args) == 2:
        task_id, value = args[0], args[1]
    else:
        raise InvalidSpec("result", "give [TASK] VALUE (or --file)")
    data = value if isinstance(value, bytes) else (sys.stdin.buffer.read() if value == "-" else value.encode())
    with _client(etcd, namespace, user) as client:
        _report([client.set_result(_own_id(task_id), data, etag=etag)], json)


@app.command()
def logs(task_id: Annotated[str, typer.Argument(metavar="TASK")],
         follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing while the task runs.")] = False,
         etcd: Etcd = None, namespace: Namespace = None, user: User = None,
         json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts: the stored entry (tail, size, "
                                                           "attempt, node, path); with -f one line per chunk.")] = False
         ) -> None:
    """Print a task's stored log tail (-f: follow it while the task runs)."""
    def write(data: bytes) -> None:
        if json:  # one JSON document per line, per chunk, like show -w --json
            print(jsonlib.dumps({"data": data.decode("utf-8", "replace")}), flush=True)
            return
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    with _client(etcd, namespace, user) as client:
        entry = client.logs(task_id, follow=follow, write=None if json and not follow else write)
        if json and not follow:
            render.print_json({"id": client.locate(task_id)[1], "entry": entry})
        elif entry is None and not follow:
            render.err.print(f"no log stored for {task_id} (it has not run, or wrote nothing)")


@app.command()
def gc(keep: Annotated[str, typer.Option(help="Remove jobs finished longer ago than this (7d, 12h, 0).")] = "7d",
       dry_run: Annotated[bool, typer.Option(help="Only list what would go.")] = False,
       compact: Annotated[bool, typer.Option(help="Also compact etcd's history to now.")] = False,
       defrag: Annotated[bool, typer.Option(help="Then defragment every etcd endpoint (gives compacted "
                                                  "space back).")] = False,
       disarm: Annotated[bool, typer.Option(help="Then disarm etcd's NOSPACE alarm.")] = False,
       etcd: Etcd = None, namespace: Namespace = None, json: Json = False) -> None:
    """Remove finished jobs older than --keep now (nodes also do it hourly); with --compact --defrag
    --disarm, recover an etcd that raised its NOSPACE alarm."""
    from conductor.spec import parse_duration

    seconds = 0.0 if keep.strip() in ("0", "0s") else parse_duration(keep, "--keep")
    if dry_run and (defrag or disarm):
        raise InvalidSpec("--dry-run", "writes nothing: it does not go with --defrag or --disarm")
    with _client(etcd, namespace) as client:
        done = {"removed": client.gc(seconds, dry_run=dry_run, compact=compact), "dry_run": dry_run,
                "defragmented": client.defragment() if defrag else [],
                "disarmed": client.disarm() if disarm else []}
    render.print_json(done) if json else _gc_report(done)


def _gc_report(done: dict[str, Any]) -> None:
    removed = done["removed"]
    print(f"{'would remove' if done['dry_run'] else 'removed'} {len(removed)} job(s)"
          + "".join(f"\n  {j}" for j in removed))
    for endpoint in done["defragmented"]:
        print(f"defragmented {endpoint}")
    for alarm in done["disarmed"]:
        print(f"disarmed {alarm['alarm']} on member {alarm['member']}")

