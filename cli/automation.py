"""Commands for work started by parameters, messages and the clock: template, send, schedule."""
from __future__ import annotations

from typing import Annotated, Any, Callable, Optional

import typer

from conductor import ticks

from . import render
from .common import Etcd, Json, Namespace, User, _client, app, parse_params

template_app = typer.Typer(no_args_is_help=True, help="Store and list templates (job files with inputs).")
schedule_app = typer.Typer(no_args_is_help=True, help="Cron rules that post a template, once per tick.")
app.add_typer(template_app, name="template")
app.add_typer(schedule_app, name="schedule")

Params = Annotated[Optional[list[str]], typer.Option("-p", "--param", help="key=value; repeat.")]


@template_app.command("add")
def template_add(file: Annotated[str, typer.Argument(help="Job file with inputs (YAML or JSON; - for stdin).")],
                 replace: Annotated[bool, typer.Option(help="Replace a template of the same name.")] = False,
                 shared: Annotated[bool, typer.Option(
                     "--shared", help="Publish it for every user, read-only to them (admins).")] = False,
                 etcd: Etcd = None, namespace: Namespace = None, user: User = None, json: Json = False) -> None:
    """Check and store a template as yours (or, --shared, for everyone); its name is the file's name field."""
    with _client(etcd, namespace, user) as client:
        stored = client.add_template(file, replace=replace, shared=shared)
        render.print_json(stored) if json else print(f"template {stored['name']} {'published' if shared else 'stored'}")


@template_app.command("list")
def template_list(etcd: Etcd = None, namespace: Namespace = None, json: Json = False) -> None:
    """List stored templates with their inputs and triggers."""
    with _client(etcd, namespace) as client:
        _listing(client.templates(), json, "no templates", _template_line)


def _template_line(t: dict[str, Any]) -> str:
    inputs = ", ".join(n + ("*" if s["required"] else "") + (" (secret)" if s["secret"] else "")
                       for n, s in t["meta"]["inputs"].items()) or "-"
    extra = "".join(f"  {k}: {', '.join(t['meta'][k])}" for k in ("triggers", "after") if t["meta"][k])
    return f"{t['name']}{'  (shared)' if t.get('shared') else ''}  inputs: {inputs}{extra}"


def _listing(found: list[dict[str, Any]], json: bool, empty: str, line: Callable[[dict[str, Any]], str]) -> None:
    """A list command's output: the items as JSON, or one line each (``empty`` when there are none)."""
    if json:
        render.print_json(found)
        return
    print("\n".join(line(item) for item in found) if found else empty)


@template_app.command("show")
def template_show(name: str, etcd: Etcd = None, namespace: Namespace = None, json: Json = False) -> None:
    """Show a template: its inputs, triggers and job."""
    import yaml

    with _client(etcd, namespace) as client:
        found = client.template(name)
        if json:
            render.print_json(found)
        else:
            print(f"# template {found['name']}, stored by {found['by']} (etag {found['etag']})")
            print(yaml.safe_dump(found["data"], sort_keys=False).rstrip())


@template_app.command("guards")
def template_guards(all_users: Annotated[bool, typer.Option(
                        "--all-users", help="Every user's records, not only yours (admins).")] = False,
                    etcd: Etcd = None, namespace: Namespace = None, json: Json = False) -> None:
    """List loop guard records: message chains and templates stopped as runaway loops."""
    with _client(etcd, namespace) as client:
        _listing(client.loop_guards(all_users), json, "no loop guard has stopped anything", _guard_line)


def _guard_line(g: dict[str, Any]) -> str:
    what = "STOPPED (template resume to restart)" if g.get("stopped") else "chain stopped"
    return (f"{g['template']}  {what}: {g['reason']}  (message {g['message']} from job {g.get('job') or '-'}, "
            f"depth {g['depth']}, {render.age(g['at'])} ago)")


@template_app.command("resume")
def template_resume(name: str, etcd: Etcd = None, namespace: Namespace = None) -> None:
    """Let messages post a template again after its loop guard stopped it (clears its record)."""
    with _client(etcd, namespace) as client:
        client.resume_template(name)
        print(f"template {name} resumed")


@template_app.command("rm")
def template_rm(name: str, shared: Annotated[bool, typer.Option(
                    "--shared", help="Remove the published template of that name (admins).")] = False,
                etcd: Etcd = None, namespace: Namespace = None) -> None:
    """Remove a template (jobs already posted from it stay)."""
    with _client(etcd, namespace) as client:
        client.remove_template(name, shared=shared)
        print(f"template {name} removed")


@app.command()
def send(message: str, param: Params = None, etcd: Etcd = None, namespace: Namespace = None, user: User = None,
         json: Json = False) -> None:
    """Post one job for every template whose triggers list MESSAGE; prints their ids."""
    with _client(etcd, namespace, user) as client:
        posted = client.send(message, parse_params(param))
        if json:
            render.print_json(posted)
        elif posted:
            print("\n".join(posted))
        else:
            render.err.print(f"no template is triggered by {message!r} (or it only counted towards a join)")


@schedule_app.command("add")
def schedule_add(name: str, cron: Annotated[str, typer.Option(help="5 fields, or 6 with seconds last.")],
                 template: Annotated[str, typer.Option(help="The template to post.")],
                 param: Params = None,
                 overlap: Annotated[str, typer.Option(help="allow, forbid (skip the tick while the previous run "
                                                          "is active) or replace (kill it).")] = "allow",
                 catch_up: Annotated[int, typer.Option(min=0, help="Missed ticks (no conductor running) to fire "
                                                              "once each; older ones are skipped.")] = 0,
                 replace: Annotated[bool, typer.Option(help="Replace a schedule of the same name.")] = False,
                 tz: Annotated[str, typer.Option(help="Time zone the rule is read in (IANA name, e.g. "
                                                      "Europe/Paris); DST handled, see docs/templates.md.")] = "UTC",
                 etcd: Etcd = None, namespace: Namespace = None, user: User = None, json: Json = False) -> None:
    """Add a schedule; every tick posts the template once across the cluster."""
    with _client(etcd, namespace, user) as client:
        stored = client.add_schedule(name, cron, template, parse_params(param), overlap, catch_up, replace, tz)
        render.print_json(stored) if json else print(f"schedule {name} added: {stored['cron']} {stored['tz']} "
                                                     f"-> {template}")


@schedule_app.command("list")
def schedule_list(etcd: Etcd = None, namespace: Namespace = None, json: Json = False) -> None:
    """List schedules with their next fire times."""
    with _client(etcd, namespace) as client:
        _listing(client.schedules(), json, "no schedules", _schedule_line)


def _schedule_line(s: dict[str, Any]) -> str:
    when = ("paused" if s.get("paused") else "never fires" if s.get("next") is None
            else "next " + ticks.local(s["next"], s["tz"]))
    return (f"{s['name']}  {s['cron']} {s['tz']}  -> {s['template']}  {when}  overlap {s['overlap']}, "
            f"catch-up {s['catch_up']}")


@schedule_app.command("show")
def schedule_show(name: str,
                  fires: Annotated[int, typer.Option(min=1, help="How many of the last fire records to list.")] = 20,
                  etcd: Etcd = None, namespace: Namespace = None, json: Json = False) -> None:
    """Show a schedule and its last fire records (posted, skipped, missed), times in its zone."""
    with _client(etcd, namespace) as client:
        found = client.schedule(name, fires)
        if json:
            render.print_json(found)
            return
        print(_schedule_line(found))
        print("\n".join(_fire_line(f, found["tz"]) for f in found["fires"]) if found["fires"] else "no ticks yet")


def _fire_line(fire: dict[str, Any], tz: str) -> str:
    """One fire record: when, what happened, and the job (or, for missed ticks, which ones)."""
    if fire.get("state") == "missed":
        return (f"{ticks.local(fire['tick'], tz)}  missed {fire.get('count', 1)} tick(s) from "
                f"{ticks.local(fire.get('from', fire['tick']), tz)}, beyond catch-up")
    return f"{ticks.local(fire['tick'], tz)}  {fire.get('state')}  job {fire.get('job', '-')}"


@schedule_app.command("pause")
def schedule_pause(name: str, etcd: Etcd = None, namespace: Namespace = None) -> None:
    """Stop firing a schedule (until unpause)."""
    with _client(etcd, namespace) as client:
        client.pause_schedule(name, True)
        print(f"schedule {name} paused")


@schedule_app.command("unpause")
def schedule_unpause(name: str, etcd: Etcd = None, namespace: Namespace = None) -> None:
    """Fire a paused schedule again (ticks missed meanwhile count as missed: see --catch-up)."""
    with _client(etcd, namespace) as client:
        client.pause_schedule(name, False)
        print(f"schedule {name} unpaused")


@schedule_app.command("rm")
def schedule_rm(name: str, etcd: Etcd = None, namespace: Namespace = None) -> None:
    """Remove a schedule."""
    with _client(etcd, namespace) as client:
        client.remove_schedule(name)
        print(f"schedule {name} removed")
