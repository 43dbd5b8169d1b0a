"""Schedules in a time zone: tick instants across DST changes (pure, with an injected ``after``,
no etcd), the examples of docs/templates.md, and a real conductor firing a rule read in a zone,
with every tick's fate (posted, missed) recorded and shown."""
from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conductor import codec, schedules, ticks
from conductor.errors import InvalidSpec
from harness import conductor_cli, wait_for

DOCS = Path(__file__).resolve().parent.parent / "docs" / "templates.md"
PARIS = "Europe/Paris"


def utc(text: str) -> float:
    """'2026-03-29 01:00' (UTC) as epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def walk(cron: str, tz: str, after: str, days: float = 3) -> list[float]:
    return ticks.ticks(cron, tz, utc(after), utc(after) + days * 86400, 10_000)


def test_a_daily_paris_rule_moves_with_summer_time_and_fires_once_in_the_spring_gap():
    got = walk("30 2 * * *", PARIS, "2026-03-27 12:00")
    assert got == [utc("2026-03-28 01:30"), utc("2026-03-29 01:00"), utc("2026-03-30 00:30")]
    assert [ticks.local(t, PARIS) for t in got] == [
        "2026-03-28 02:30:00 CET", "2026-03-29 03:00:00 CEST", "2026-03-30 02:30:00 CEST"]


def test_ticks_inside_the_spring_gap_become_one_fire_at_the_end_of_the_gap():
    got = walk("*/20 2 * * *", PARIS, "2026-03-28 12:00", days=1)
    assert got == [utc("2026-03-29 01:00")], "02:00, 02:20 and 02:40 do not exist: one fire at 03:00 CEST"


def test_a_fixed_hour_rule_fires_once_in_the_autumn_overlap_the_first_time():
    got = walk("30 2 * * *", PARIS, "2026-10-23 12:00")
    assert got == [utc("2026-10-24 00:30"), utc("2026-10-25 00:30"), utc("2026-10-26 01:30")]
    # a start inside the repeated hour, after the first 02:30, still does not fire the second one
    assert walk("30 2 * * *", PARIS, "2026-10-25 00:40", days=1.5) == [utc("2026-10-26 01:30")]
    assert walk("* 2 * * *", PARIS, "2026-10-24 23:00", days=1) == [utc("2026-10-25 00:00") + 60 * i for i in range(60)]


def test_an_interval_rule_follows_real_time_through_both_passes_of_the_repeated_hour():
    got = walk("*/20 * * * *", PARIS, "2026-10-24 23:50", days=2 / 24)
    assert got == [utc("2026-10-25 00:00") + 1200 * i for i in range(6)], "evenly spaced, 6 in two real hours"
    seconds = walk("* * * * * */10", PARIS, "2026-10-25 00:59:30", days=60 / 86400)
    assert [b - a for a, b in zip(seconds, seconds[1:])] == [10.0] * (len(seconds) - 1)


def test_the_next_fire_of_a_stored_schedule_reads_its_zone_and_old_schedules_stay_utc():
    after = utc("2026-07-01 12:00")
    assert schedules.next_fire({"cron": "0 9 * * *", "tz": PARIS}, after) == utc("2026-07-02 07:00")
    assert schedules.next_fire({"cron": "0 9 * * *"}, after) == utc("2026-07-02 09:00")
    assert schedules.next_fire({"cron": "0 9 * * *", "tz": "UTC"}, after) == utc("2026-07-02 09:00")


@pytest.mark.parametrize("bad", ["Mars/Olympus", "Europe/Pariss", "../etc/passwd", "+02:00"])
def test_an_unknown_zone_is_refused_naming_the_option(bad):
    with pytest.raises(InvalidSpec) as err:
        ticks.validate_tz(bad)
    assert err.value.field == "--tz" and "not a known time zone" in str(err.value)


def _doc_examples() -> list[list[str]]:
    """The rows of the table of examples in docs/templates.md, section Time zones."""
    text = DOCS.read_text()
    section = text[text.index("### Time zones and daylight saving time"):]
    lines = section[section.index("| rule | zone |"):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    assert len(rows) >= 5
    return rows


@pytest.mark.parametrize("row", _doc_examples(), ids=lambda r: f"{r[0]} {r[1]} {r[2]}")
def test_the_docs_examples_hold(row):
    rule, tz, after, expected, clock = row
    stamps = [utc(t) for t in expected.split(", ")]
    got = ticks.ticks(rule.strip("`"), tz, utc(after), stamps[-1], 100)
    assert got == stamps
    shown = re.findall(r"\b\d\d:\d\d [A-Z]+\b", clock)  # the wall times, without the remarks
    assert [ticks.local(t, tz)[11:16] + ticks.local(t, tz)[19:] for t in got] == shown


def test_a_real_conductor_fires_a_rule_read_in_a_zone_and_records_missed_ticks(client, shared_etcd, start_nodes):
    """Every 2 s in Asia/Kolkata (UTC+05:30): ticks missed while no conductor ran leave one
    ``missed`` record, the ticks after are posted once each with the zone in their source, and
    ``schedule show`` lists both with times in the zone; an unknown zone writes nothing."""
    common = ["--etcd", shared_etcd.endpoint, "--namespace", client.keys.namespace, "--user", "tester"]
    client.add_template({"name": "tick", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    before = client.store.count(client.keys.namespace)
    run = conductor_cli("schedule", "add", "k", "--cron", "* * * * * */2", "--tz", "Mars/Olympus", "--template",
                        "tick", *common)
    assert run.returncode == 2 and "--tz: 'Mars/Olympus' is not a known time zone" in run.stderr, run.stderr
    assert client.store.count(client.keys.namespace) == before, "nothing was written"
    run = conductor_cli("schedule", "add", "k", "--cron", "* * * * * */2", "--tz", "Asia/Kolkata", "--template",
                        "tick", *common)
    assert run.returncode == 0 and "Asia/Kolkata" in run.stdout, run.stderr
    time.sleep(7)  # no conductor: two or three ticks are missed for good (catch-up 0)
    start_nodes(shared_etcd.endpoint, 1)
    wait_for(lambda: sum(f["state"] == "posted" for f in client.schedule("k", 50)["fires"]) >= 3, 30,
             what="three ticks posted")
    client.pause_schedule("k")
    fires = client.schedule("k", 100)["fires"]
    missed = [f for f in fires if f["state"] == "missed"]
    posted = [f for f in fires if f["state"] == "posted"]
    assert len(missed) == 1 and missed[0]["count"] >= 2, fires
    assert missed[0]["tick"] - missed[0]["from"] == 2 * (missed[0]["count"] - 1)
    assert all(f["tick"] > missed[0]["tick"] for f in posted)
    assert all(int(f["tick"]) % 2 == 0 for f in posted)
    jobs = [j for j in client.jobs(limit=0) if (j.get("source") or {}).get("schedule") == "k"]
    assert sorted(j["source"]["tick"] for j in jobs) == sorted(f["tick"] for f in posted), "one job per posted tick"
    assert {j["source"]["tz"] for j in jobs} == {"Asia/Kolkata"}
    shown = conductor_cli("schedule", "show", "k", *common, "--user", client.user)
    assert shown.returncode == 0, shown.stderr
    assert "* * * * * */2 Asia/Kolkata" in shown.stdout and " IST  posted  job " in shown.stdout
    assert f"missed {missed[0]['count']} tick(s) from {ticks.local(missed[0]['from'], 'Asia/Kolkata')}" in shown.stdout
    as_json = json.loads(conductor_cli("schedule", "show", "k", "--fires", "2", "--json", *common, "--user", client.user).stdout)
    assert as_json["tz"] == "Asia/Kolkata" and len(as_json["fires"]) == 2
    stored = codec.unpack(client.store.get(client.keys.schedule(client.user, "k")).value)
    assert stored["tz"] == "Asia/Kolkata"


class _InjectedClock:
    """A node clock the test moves by hand (the scheduler reads only ``local`` and ``chore_time``)."""

    def __init__(self, now: float):
        self.now = now

    def local(self) -> float:
        return self.now

    def chore_time(self) -> float:
        return self.now


def test_a_paris_schedule_fires_at_the_right_utc_instants_across_a_dst_change(client):
    """The scheduler itself, against a real etcd, with an injected clock walked across the spring
    change of 2027 (Sunday 28 March, 02:00 CET -> 03:00 CEST): ``30 2 * * *`` fires at 01:30 UTC
    in winter, at 01:00 UTC on the day of the gap (03:00 CEST, moved, not skipped) and at 00:30
    UTC in summer, once each, and every tick's fate is a fire record of the schedule."""
    import threading

    from conductor.scheduler import Scheduler

    client.add_template({"name": "daily", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    client.add_schedule("paris", "30 2 * * *", "daily", tz=PARIS)
    clock = _InjectedClock(utc("2027-03-26 23:00"))
    scheduler = Scheduler(client.board, "injected", threading.Event(), clock)  # type: ignore[arg-type]
    kvs, revision = client.store.scan(client.keys.schedule())
    scheduler.cache.reset(kvs, revision)
    next_at: dict[str, float] = {}
    scheduler._fire_all(next_at)  # months since it was added: one missed record, one late fire
    first = {f["tick"] for f in client.schedule("paris", 100)["fires"]}
    expected = [utc("2027-03-27 01:30"), utc("2027-03-28 01:00"), utc("2027-03-29 00:30")]
    walked = utc("2027-03-26 23:00")
    while walked < utc("2027-03-29 12:00"):  # every 5 minutes of injected time, firing what is due
        walked += 300
        clock.now = walked
        scheduler._fire_all(next_at)
    fires = [f for f in client.schedule("paris", 100)["fires"] if f["tick"] not in first]
    assert sorted(f["tick"] for f in fires) == expected, [ticks.local(f["tick"], PARIS) for f in fires]
    assert all(f["state"] == "posted" for f in fires), fires
    assert [ticks.local(t, PARIS) for t in expected] == [
        "2027-03-27 02:30:00 CET", "2027-03-28 03:00:00 CEST", "2027-03-29 02:30:00 CEST"]
    jobs = [j for j in client.jobs(limit=0) if (j.get("source") or {}).get("schedule") == "paris"]
    assert sorted(j["source"]["tick"] for j in jobs if j["source"]["tick"] not in first) == expected
