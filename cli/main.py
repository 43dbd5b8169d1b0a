"""``conductor``: the command line, a thin layer over :class:`conductor.Client`."""
from __future__ import annotations

import atexit
import gc
import importlib
import json as jsonlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer

from conductor.errors import ConductorError, InvalidSpec
from conductor.spec import parse_duration, parse_labels

from . import render, security

from .common import Etcd, Json, Namespace, User, _client, _endpoints, app, parse_params  # noqa: F401
from . import web as _web  # registers serve; run takes its --http options

@app.command()
def run(etcd: Etcd = None, namespace: Namespace = None,
        name: Annotated[str, typer.Option(help="Node name. Default: the host name (with -2, -3... if taken).")] = "",
        slots: Annotated[Optional[int], typer.Option(min=1, help="Tasks at once. Default: 8 per CPU for tasks of layers that run "
                                                                 "short (at most 1 s), the CPU count for the others.")] = None,
        labels: Annotated[Optional[list[str]], typer.Option(
            "--labels", help="k=v labels tasks can require (needs.labels); comma-separated or repeated.")] = None,
        ttl: Annotated[int, typer.Option(min=2, help="Lease TTL in seconds: how soon others take over.")] = 10,
        data_dir: Annotated[Optional[Path], typer.Option(help="Task logs and local etcd data. Default: "
                                                         "$CONDUCTOR_DATA, else $XDG_DATA_HOME/conductor, else "
                                                         "~/.local/share/conductor.")] = None,
        drain: Annotated[bool, typer.Option(help="On SIGTERM let running tasks finish instead of "
                                                 "handing them back.")] = False,
        sweep: Annotated[float, typer.Option(min=0.5, help="Seconds between safety-net sweeps.")] = 10.0,
        docker_host: Annotated[str, typer.Option(envvar="DOCKER_HOST", help="Docker API (Docker or podman) for "
                                                 "container tasks. Default: a local socket if one exists.")] = "",
        keep: Annotated[str, typer.Option(help="Remove finished jobs (and this node's task logs) after this "
                                               "long, e.g. 7d, 12h.")] = "7d",
        gc_every: Annotated[str, typer.Option(hidden=True, help="How often old jobs are removed.")] = "1h",
        partial_grace: Annotated[str, typer.Option(hidden=True, help="Remove a post that never finished "
                                                   "after this long.")] = "10m",
        verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging.")] = False,
        local_port: Annotated[int, typer.Option(hidden=True, help="Port of the local etcd (tests).")] = 2379,
        clock_skew: Annotated[float, typer.Option(hidden=True, help="Seconds added to this node's wall clock "
                                                  "(tests of skewed clocks).")] = 0.0,
        cluster: Annotated[bool, typer.Option("--cluster", help="Be a machine of a laptop cluster: run an etcd "
                                              "member here with TLS (the first start creates the cluster and "
                                              "prints a join command). See docs/cluster.md.")] = False,
        advertise: Annotated[str, typer.Option(help="With --cluster: this machine's address for the other "
                                               "machines. Default: the address of the default route.")] = "",
        http: _web.Http = "127.0.0.1:8420", http_cert: _web.HttpCert = "", http_key: _web.HttpKey = "") -> None:
    """Join the cluster and run tasks until stopped (SIGTERM hands tasks back; twice stops now)."""
    from conductor.localetcd import LocalEtcd, port_open
    from conductor.node import Conductor
    from conductor.settings import NodeSettings, default_data_dir

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("grpc", "urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = NodeSettings(namespace=namespace or NodeSettings().namespace, name=name, ttl=ttl, drain=drain,
                            sweep=sweep, data_dir=data_dir or default_data_dir(), docker_host=docker_host)
    if slots:  # explicit: every task may use them, short or long
        settings.slots = settings.long_slots = slots
    settings.keep = parse_duration(keep, "--keep")
    settings.clock_skew = clock_skew
    settings.gc_every = parse_duration(gc_every, "--gc-every")
    settings.partial_grace = parse_duration(partial_grace, "--partial-grace")
    label_map: dict[str, str] = {}
    for item in labels or []:
        for pair in item.split(","):
            key, sep, value = pair.partition("=")
            if not sep:
                raise InvalidSpec("--labels", f"{pair!r} is not k=v")
            label_map[key.strip()] = value.strip()
    settings.labels = parse_labels(label_map, "--labels")
    _web.node_http(settings, http, http_cert, http_key)  # checked now; served by a child process (docs/web.md)
    if cluster:
        if etcd:
            raise InvalidSpec("--cluster", "runs its own etcd member: do not give --etcd with it")
        from .cluster import run_cluster

        raise typer.Exit(run_cluster(settings, advertise, local_port))
    local = None
    endpoints = _endpoints(etcd)
    if not endpoints:
        if port_open("127.0.0.1", local_port):
            render.err.print(f"using the etcd that answers on 127.0.0.1:{local_port}")
        else:
            local = LocalEtcd(settings.data_dir / "etcd", port=local_port)
            local.start()
            render.err.print(f"started a local etcd (pid {local.proc.pid if local.proc else '?'}) on "
                             f"{local.endpoint}, data in {local.data_dir}; it stops with this conductor")
        endpoints = [f"127.0.0.1:{local_port}"]
    settings.etcd = endpoints
    settings.credentials = security.credentials()
    settings.credentials.ask_password()  # now, on a terminal: the supervisor process needs it too
    try:
        status = Conductor(settings).run_forever()
    finally:
        if local:
            local.stop()
    raise typer.Exit(status)


@app.command()
def post(file: Annotated[str, typer.Argument(help="Job file, YAML or JSON; - for stdin.")],
         wait: Annotated[bool, typer.Option("--wait", help="Follow the job to its end; exit 1 if it failed.")] = False,
         paused: Annotated[bool, typer.Option("--paused", help="Post it paused.")] = False,
         timeout: Annotated[Optional[float], typer.Option(help="With --wait: give up after this many seconds.")] = None,
         param: Annotated[Optional[list[str]], typer.Option("-p", "--param", help="key=value for an input of "
                                                             "the file or template; repeat.")] = None,
         template: Annotated[bool, typer.Option("--template", help="FILE names a stored template.")] = False,
         no_cache: Annotated[bool, typer.Option("--no-cache", help="Run every task even when a cached result "
                                                "of its cache key exists.")] = False,
         etcd: Etcd = None, namespace: Namespace = None, user: User = None, json: Json = False) -> None:
    """Post a job of ordered layers of tasks (or from a template); prints its id."""
    params = parse_params(param)
    with _client(etcd, namespace, user) as client:
        job_id = (client.post_template(file, params, paused=paused, no_cache=no_cache) if template
                  else client.post(file, paused=paused, params=params, no_cache=no_cache))
        if not wait:
            render.print_json({"id": job_id}) if json else print(job_id)
            return
        if not json:
            print(job_id)
        job = _follow(client, job_id, timeout, quiet=json)
        if json:
            render.print_json({"id": job_id, "state": job["state"], "counts": client.counts(job_id)})
        else:
            render.err.print(f"job {job_id} {render.state(job['state'])}")
        if job["state"] != "COMPLETED":
            raise typer.Exit(1)


def _follow(client: Any, job_id: str, timeout: float | None, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return client.wait(job_id, timeout=timeout)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), console=render.err,
                  transient=False) as bar:
        handle = bar.add_task(job_id, total=None, extra="")

        def update(job: dict[str, Any], counts: dict[str, int]) -> None:
            extra = f"{counts['running']} running" + (f", {counts['errored']} errored" if counts["errored"] else "")
            bar.update(handle, total=counts["total"] or 1, completed=counts["done"], extra=extra,
                       description=f"{job['name']} {job['state']}")

        return client.wait(job_id, timeout=timeout, on_progress=update)


@app.command()
def show(some_id: Annotated[Optional[str], typer.Argument(
             metavar="[ID]", help="A job, layer or task id. The job part may be a unique prefix or suffix of a "
                                  "job id, or a job name (your newest job of that name): hello.1.0.")] = None,
         state: Annotated[Optional[str], typer.Option(help="Only jobs in this state.")] = None,
         name: Annotated[Optional[str], typer.Option(help="Only jobs whose name contains this.")] = None,
         all_users: Annotated[bool, typer.Option("--all-users", help="Jobs of every user.")] = False,
         limit: Annotated[int, typer.Option(min=0, help="At most this many jobs (0: all).")] = 50,
         offset: Annotated[int, typer.Option(min=0, help="Skip this many of the newest jobs.")] = 0,
         node: Annotated[Optional[str], typer.Option(help="Only jobs with a task that ran on this node.")] = None,
         tasks: Annotated[int, typer.Option(min=0, help="Tasks shown per layer of a job or layer (0: all).")] = 20,
         all_tasks: Annotated[bool, typer.Option("--all-tasks", help="Show every task (same as --tasks 0).")] = False,
         after: Annotated[Optional[str], typer.Option(help="Page on: the tasks of this task's layer after it "
                                                          "(the 'next' of --json).")] = None,
         watch: Annotated[bool, typer.Option("--watch", "-w", help="A live view, updated from etcd watches.")] = False,
         etcd: Etcd = None, namespace: Namespace = None, user: User = None, json: Json = False) -> None:
    """List jobs, or show one job, layer or task (a page of tasks per layer, with counts by state)."""
    filters = dict(all_users=all_users, state=state, name=name, limit=limit, offset=offset, node=node)
    page = 0 if all_tasks else tasks
    with _client(etcd, namespace, user) as client:
        for line in render.alarm_lines(client.alarms()):  # on stderr: --json output stays parseable
            render.err.print(line)
        if watch:
            _watch(client, some_id, page, filters, json)
            return
        if some_id is None:
            jobs = client.jobs(**filters)
            render.print_json(jobs) if json else render.jobs_table(jobs)
            return
        found = client.show(some_id, tasks=page, after=after)
        if json:
            render.print_json(found)
        elif found["kind"] == "job":
            render.job_tree(found)
        elif found["kind"] == "layer":
            render.layer_view(found)
        else:
            render.task_view(found)


def _watch(client: Any, some_id: str | None, tasks: int, filters: dict[str, Any], json: bool) -> None:
    import threading

    from rich.live import Live

    def renderable(view: Any) -> Any:
        if some_id is None:
            return render.jobs_renderable(view)
        if view["kind"] == "job":
            return render.job_tree_renderable(view)
        return f"{view['id']} {render.state(view['state'])} on {view.get('node') or '-'}  {render.waiting(view)}"

    stop = threading.Event()
    if json:  # one JSON document per line, per change
        try:
            client.watch(some_id, lambda v: print(jsonlib.dumps(v, default=str), flush=True), stop, tasks=tasks,
                         **filters)
        except KeyboardInterrupt:
            stop.set()
        return
    with Live("[dim]reading...[/]", console=render.out, auto_refresh=False) as live:
        try:
            client.watch(some_id, lambda v: live.update(renderable(v), refresh=True), stop, tasks=tasks, **filters)
        except KeyboardInterrupt:
            stop.set()


@app.command()
def nodes(etcd: Etcd = None, namespace: Namespace = None, json: Json = False) -> None:
    """List live nodes: labels, running tasks and slots, host facts, clock, lease renewals; etcd's alarms."""
    with _client(etcd, namespace) as client:
        found = client.nodes()
        render.print_json(found) if json else render.nodes_table(found, client.alarms())


@app.command()
def check(file: Annotated[str, typer.Argument(help="Job file, YAML or JSON; - for stdin.")],
          user: User = None, json: Json = False) -> None:
    """Validate a job file without posting it (no etcd needed): every check post makes, sizes too."""
    from conductor import spec, templates
    from conductor.settings import default_user

    data = spec.load_file(file)
    meta, _ = templates.split(data)
    sample = {n: s.get("default", "x") for n, s in meta["inputs"].items()}  # any value checks the shape
    normalised = templates.instantiate(data, sample)[0]
    source: dict[str, Any] = {"kind": "file", "path": file}  # as Client.post records it
    if meta["inputs"]:
        source["inputs"] = templates.recorded_inputs(meta, sample)
    owner = user.partition(":")[0] if user else default_user()  # NAME[:PASSWORD], as the etcd commands take
    spec.check_stored(normalised, owner, source, meta)  # Board.post's size checks
    if json:
        render.print_json(normalised)
    else:
        n = sum(len(layer["tasks"]) for layer in normalised["layers"])
        print(f"{file}: valid: {len(normalised['layers'])} layer(s), {n} task(s)")


# The other command modules register their commands when imported, and main() imports only the
# one its command line names (none for the commands above and serve): at every start typer builds
# a click command of each registered command, ~1 ms each, and the modules cost their imports.
# tests/test_cli_imports.py checks this table against what each module registers.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "automation": ("send", "template", "schedule"),
    "control": ("pause", "unpause", "kill", "retry", "skip", "add-task", "logs", "gc", "env", "result"),
    "cluster": ("join", "leave", "members", "token"),
    "events": ("events",),
    "users": ("user", "auth"),
    "flow": ("keys",),
}
OWN_COMMANDS = ("serve", "run", "post", "show", "nodes", "check")  # registered by importing this module


def load_commands(argv: Sequence[str] | None = None) -> None:
    """Register the commands ``argv`` (a command line after the program name) may run: the module
    of the command it names; every module when it names none (``--help``, no arguments) or one
    that does not exist (click then lists or suggests among them all), or when ``argv`` is None.
    Then add the security options to every etcd command registered (:func:`security.secure_all`).
    Call once, before ``app()``."""
    name = argv[0] if argv and not argv[0].startswith("-") else None
    wanted = [module for module, names in COMMAND_MODULES.items() if name in names]
    if not wanted and name not in OWN_COMMANDS:
        wanted = list(COMMAND_MODULES)  # in this order, so --help lists commands as it always has
    for module in wanted:
        importlib.import_module(f"{__package__}.{module}")
    security.secure_all(app)  # --cacert, --cert, --key, --user, --password-file on every etcd command


def main() -> None:
    # gRPC's C core prints a refused TLS handshake on stderr, in several lines; the error we raise
    # says it in one. Set before grpc is first imported (the client is imported lazily, by the
    # command). GRPC_VERBOSITY=ERROR in the environment brings them back.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    # At exit the interpreter collects once more, walking every object the imports made (typer,
    # pydantic, rich, grpc, protobuf): ~60 ms of a short command such as show. Frozen first, they
    # are skipped; the process is ending, so nothing is kept longer. Registered now, before the
    # command imports anything, so it runs after the exit handlers those imports register.
    atexit.register(gc.freeze)
    load_commands(sys.argv[1:])
    try:
        app()
    except ConductorError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
