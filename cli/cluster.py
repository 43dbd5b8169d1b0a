"""Commands of a laptop cluster: ``run --cluster`` (its body), ``join``, ``leave``, ``members``, ``token``.
See docs/cluster.md."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from conductor.spec import parse_duration

from . import render
from .common import Json, Namespace, app

DataDir = Annotated[Optional[Path], typer.Option(help="This machine's data directory (its cluster is under "
                                                 "cluster/). Default: $CONDUCTOR_DATA, else ~/.local/share/conductor.")]
Advertise = Annotated[str, typer.Option(help="This machine's address, reachable by the other machines. Default: "
                                        "the address of the default route.")]


def _say(line: str) -> None:
    # plain stderr, never wrapped: the join command is copied from here
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _dir(data_dir: Path | None) -> Any:
    from conductor.clusterdir import ClusterDir
    from conductor.settings import default_data_dir

    return ClusterDir((data_dir or default_data_dir()).resolve())


def run_cluster(settings: Any, advertise: str, client_port: int) -> int:
    """The body of ``conductor run --cluster``: found the cluster here on first start, else start
    this machine's member with the data it has; then run the conductor on it."""
    from conductor import cluster
    from conductor.errors import InvalidSpec
    from conductor.keys import Keys
    from conductor.node import Conductor

    cdir = _dir(settings.data_dir)
    if cdir.exists():
        state = cdir.load()
        if advertise and cluster.check_address(advertise) != state.advertise:
            raise InvalidSpec("--advertise", f"this member was created with {state.advertise}; a member's "
                                             "address cannot change (leave and join again)")
    else:
        address = cluster.check_address(advertise) if advertise else cluster.detect_address()
        state = cluster.found(cdir, settings.node_name(), address, client_port)
        _say(f"created cluster {state.cluster_id}: CA and certificates in {cdir.root}")
    with cluster.ClusterRun(cdir, state, Keys(settings.namespace), say=_say) as member:
        settings.etcd = member.endpoints()
        settings.etcd_tls = tuple(member.tls)
        return Conductor(settings).run_forever()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def join(ctx: typer.Context,
         token: Annotated[str, typer.Argument(help="The join token printed by `conductor run --cluster` or "
                                                   "`conductor token` on a machine of the cluster.")],
         advertise: Advertise = "", data_dir: DataDir = None,
         name: Annotated[str, typer.Option(help="This machine's name (node and etcd member). Default: host name.")] = "",
         local_port: Annotated[int, typer.Option(hidden=True, help="etcd client port (tests).")] = 2379) -> None:
    """Join a laptop cluster: prove the token, get certificates, become an etcd member, then run as
    `conductor run --cluster` does (every other option is one of run's: --slots, --labels, --ttl...)."""
    import socket

    from typer.main import get_command

    from conductor import cluster

    cdir = _dir(data_dir)
    address = cluster.check_address(advertise) if advertise else cluster.detect_address()
    member = name or socket.gethostname().split(".")[0]
    run_args = ["--cluster", "--advertise", address, "--data-dir", str(cdir.root.parent), "--name", member,
                "--local-port", str(local_port), *ctx.args]
    command = get_command(app).commands["run"]  # type: ignore[attr-defined]
    command.make_context("run", list(run_args))  # a bad option of run's fails here, before joining
    state = cluster.join(cdir, token, member, address, local_port)
    _say(f"joined cluster {state.cluster_id} as {member} ({address}); starting its etcd member and conductor")
    command.main(run_args, prog_name="conductor join", standalone_mode=False)


@app.command()
def leave(data_dir: DataDir = None) -> None:
    """Take this machine out of its cluster: its conductor hands its tasks back, its etcd member is
    removed, and its cluster data is deleted."""
    from conductor import cluster

    print(cluster.leave(_dir(data_dir)))


@app.command()
def members(data_dir: DataDir = None, json: Json = False) -> None:
    """List the cluster's etcd members: address, health, leader, learner, raft lag."""
    from conductor import cluster, members as membership

    cdir = _dir(data_dir)
    state = cdir.load()
    with cluster.access(cdir, state, [state.local_endpoint(), *state.peers]) as store:
        rows = membership.health(store)
    if json:
        render.print_json([{**r, "id": f"{r['id']:x}"} for r in rows])
        return
    for r in rows:
        role = "leader" if r["leader"] else ("learner" if r["learner"] else "follower")
        status = "healthy" if r["healthy"] else f"UNHEALTHY {r['error']}".strip()
        lag = "-" if r["lag"] is None else str(r["lag"])
        print(f"{r['id']:016x}  {r['name'] or '(not started)':<16} {', '.join(r['client_urls']) or '-':<28} "
              f"{role:<8} {status:<10} lag {lag}")


@app.command()
def token(data_dir: DataDir = None, namespace: Namespace = None,
          ttl: Annotated[str, typer.Option(help="How long the token is valid, e.g. 24h, 30m.")] = "24h") -> None:
    """Print a new join token (and the command that uses it) for this machine's join endpoint."""
    from conductor import cluster
    from conductor.keys import Keys
    from conductor.settings import default_namespace

    seconds = parse_duration(ttl, "--ttl")
    cdir = _dir(data_dir)
    state = cdir.load()
    with cluster.access(cdir, state, [state.local_endpoint(), *state.peers]) as store:
        issued = cluster.new_token(store, Keys(namespace or default_namespace()), cdir, state, seconds)
    print(f"conductor join {issued}")
