"""The web UI in a real headless browser (Debian's chromium and chromedriver, through selenium),
against the real server (a ``conductor serve`` process, tests/webserver.py, or the one a
``conductor run --http`` starts), real etcd and real conductor processes; and the UI's pure rules.

``CONDUCTOR_SCREENSHOTS=1`` saves the screenshots into docs/screenshots (what docs/web-ui.md
shows); otherwise they go under the test's tmp_path.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conductor.client import Client
from conductor.credentials import Credentials
from conductor.web import ui_format
from harness import EtcdServer, Node, conductor_cli, free_port, wait_for
from webserver import WebServer

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
LAPTOP = (1280, 900)
PHONE = (390, 844)


# ---- the pure rules ---------------------------------------------------------------------------

def test_durations_times_and_sizes_read_as_people_write_them():
    assert ui_format.duration(0.42) == "0.4s"
    assert ui_format.duration(12.4) == "12s"
    assert ui_format.duration(185) == "3m 05s"
    assert ui_format.duration(7260) == "2h 01m"
    assert ui_format.duration(3 * 86400 + 4 * 3600) == "3d 4h"
    assert ui_format.ago(100.0, now=105.0) == "5.0s ago"
    assert ui_format.ago(280.0, now=100.0) == "in 3m 00s"
    assert ui_format.when(0) == "–"
    assert ui_format.when(1764430000) == "2025-11-29 15:26:40 UTC"
    assert ui_format.size(512) == "512 B"
    assert ui_format.size(3 * 1024 + 300) == "3.3 KiB"
    assert ui_format.took({"started": 10.0, "ended": 12.5}) == "2.5s"
    assert ui_format.short("01abc.2.17") == ".2.17"


def test_a_progress_bar_stacks_done_work_first_and_leaves_empty_states_out():
    counts = {"completed": 2, "errored": 1, "running": 1, "queued": 0, "pending": 4, "skipped": 0, "total": 8}
    assert ui_format.bar(counts) == [("completed", 25.0, 2), ("errored", 12.5, 1), ("running", 12.5, 1),
                                     ("pending", 50.0, 4)]
    assert ui_format.bar({"total": 0}) == []
    assert ui_format.done_of(counts) == "3 / 8 done"


def test_buttons_follow_the_state_and_the_pause():
    assert ui_format.actions({"kind": "task", "state": "RUNNING"}) == ["pause", "kill", "skip"]
    assert ui_format.actions({"kind": "task", "state": "QUEUED", "paused_at": 5}) == ["unpause", "kill", "skip"]
    assert ui_format.actions({"kind": "task", "state": "ERRORED"}) == ["retry", "skip"]
    assert ui_format.actions({"kind": "task", "state": "COMPLETED"}) == []
    assert "retry" in ui_format.actions({"kind": "layer", "state": "RUNNING"})


# ---- the browser --------------------------------------------------------------------------------

@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver here: scripts/setup --browser installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={LAPTOP[0]},{LAPTOP[1]}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[Any, str], Path]:
    where = ROOT / "docs" / "screenshots" if os.environ.get("CONDUCTOR_SCREENSHOTS") == "1" else tmp_path / "shots"
    where.mkdir(parents=True, exist_ok=True)

    def save(driver: Any, name: str) -> Path:
        path = where / f"{name}.png"
        driver.save_screenshot(str(path))
        return path

    return save


@pytest.fixture
def web(shared_etcd: EtcdServer, namespace: str, tmp_path: Path) -> Iterator[WebServer]:
    """``conductor serve`` on the test's etcd and namespace; pages act as the ``client`` fixture's user."""
    server = WebServer(shared_etcd.endpoint, namespace, tmp_path, env={"CONDUCTOR_USER": "tester"}).start()
    yield server
    server.stop()


def sh(script: str, **extra: Any) -> dict[str, Any]:
    return {"cmd": ["sh", "-c", script], **extra}


def until(driver: Any, check: Callable[[Any], Any], what: str, timeout: float = 20) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def safe(d: Any) -> Any:
        try:
            return check(d)
        except StaleElementReferenceException:  # the live fragment was swapped under us: look again
            return False

    return WebDriverWait(driver, timeout, 0.1).until(safe, message=what)


def css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0] if found else None


# read in one script call: the live fragment may be swapped between finding an element and reading it
def attr(driver: Any, selector: str, name: str) -> str | None:
    return driver.execute_script("var e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1])",
                                 selector, name)


def text(driver: Any, selector: str) -> str:
    return driver.execute_script("var e = document.querySelector(arguments[0]); return e ? e.innerText : ''", selector)


def press(driver: Any, selector: str) -> None:
    """Click a button of the live part (retrying if the fragment is swapped as we click)."""
    until(driver, lambda d: css(d, selector).click() is None, f"clicked {selector}", 10)


def accept_confirm(driver: Any) -> None:
    from selenium.webdriver.support import expected_conditions

    until(driver, expected_conditions.alert_is_present(), "the confirm dialog", 5)
    driver.switch_to.alert.accept()


def row(task_id: str) -> str:
    """The selector of a task's row on the job page (ids hold dots: no ``#`` selector)."""
    return f"[id='task-{task_id}']"


def not_reloaded(driver: Any) -> bool:
    return driver.execute_script("return window.__kept === 'yes'") is True


def test_the_browser_follows_a_running_job_live_and_steers_it_with_etags(client: Client, shared_etcd, start_nodes,
                                                                        web, browser, shots, tmp_path):
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    start_nodes(shared_etcd.endpoint, 1, slots=4)
    client.add_template({"name": "nightly-report", "description": "the nightly numbers",
                         "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    client.add_schedule("nightly", "30 2 * * *", "nightly-report")
    job = client.post({"name": "ui-demo", "description": "a job the browser test follows", "layers": [
        {"name": "work", "tasks": [
            sh(f"echo first line; while [ ! -e {gate2} ]; do sleep 0.1; done; echo second line; sleep 120",
               name="follow-me"),
            sh(f"while [ ! -e {gate1} ]; do sleep 0.1; done", name="gated"),
            sh("true", name="quick"),
            sh("echo oops >&2; exit 3", name="fails", max_attempts=1)]},
        {"name": "after", "tasks": [sh("true", name="last")]}]})
    follow, gated = f"{job}.0.0", f"{job}.0.1"
    wait_for(lambda: client.task(gated)["state"] == "RUNNING" and client.task(follow)["state"] == "RUNNING", 30,
             what="both gated tasks running")

    driver = browser
    # the job list: state, owner, progress
    driver.get(web.url + "/ui/")
    until(driver, lambda d: "ui-demo" in text(d, f"#job-{job}"), "the job in the list")
    assert attr(driver, f"#job-{job}", "data-state") == "RUNNING"
    assert "tester" in text(driver, f"#job-{job}")
    assert css(driver, f"#job-{job} .progress .seg.s-running") is not None
    until(driver, lambda d: "1 errored" in text(d, f"#job-{job}"), "the failed task counted")
    shots(driver, "jobs")

    # the job page: a task changes state without a reload
    press(driver, f"#job-{job} a.name")
    until(driver, lambda d: attr(d, row(gated), "data-state") == "RUNNING", "the gated task running")
    driver.execute_script("window.__kept = 'yes'")
    until(driver, lambda d: "live" == text(d, "#live-word"), "the live stream open")
    press(driver, "#job-history summary")  # opened by the reader: stays open through live updates
    gate1.touch()
    until(driver, lambda d: attr(d, row(gated), "data-state") == "COMPLETED", "the gated task COMPLETED")
    assert not_reloaded(driver)
    assert attr(driver, "#job-history", "open") is not None, "the history the reader opened is still open"
    shots(driver, "job")

    # the task page: a log line arrives without a reload
    press(driver, row(follow) + " a")
    until(driver, lambda d: "first line" in text(d, "#log"), "the stored log tail")
    driver.execute_script("window.__kept = 'yes'")
    gate2.touch()
    until(driver, lambda d: "second line" in text(d, "#log"), "a log line arriving live")
    assert text(driver, "#log").count("first line") == 1
    assert not_reloaded(driver)
    shots(driver, "task")

    # kill: the task ends ERRORED on the page
    press(driver, "#task form.act[data-action=kill] button")
    accept_confirm(driver)
    until(driver, lambda d: attr(d, "#task", "data-state") == "ERRORED", "the killed task ERRORED", 30)
    assert "kill requested" in text(driver, "#flash")
    assert not_reloaded(driver)

    # retry with a stale etag: someone else retried it after the page stopped following
    shown = int(attr(driver, "#task", "data-etag") or 0)
    css(driver, "#live-toggle").click()
    until(driver, lambda d: text(d, "#live-word") == "paused", "live updates paused")
    client.retry(follow)
    wait_for(lambda: client.task(follow)["state"] == "RUNNING", 30, what="the task running again")
    attempts = client.task(follow)["attempts"]
    press(driver, "#task form.act[data-action=retry] button")
    until(driver, lambda d: "changed since you loaded it" in text(d, "#flash .flash.bad"), "the stale explanation")
    message = text(driver, "#flash")
    now = client.task(follow)
    assert re.search(rf"now RUNNING at etag {now['etag']}", message), message
    assert f"the page showed etag {shown}" in message and "nothing was done" in message, message
    assert now["attempts"] == attempts, "a stale retry changed nothing"
    assert css(driver, "#flash a.reload") is not None, "a way to reload next to the explanation"
    assert attr(driver, "#task", "data-state") == "ERRORED", "the page held still while live was off"
    shots(driver, "stale-etag")
    css(driver, "#live-toggle").click()  # live again: the page catches up, the new attempt's log follows
    until(driver, lambda d: attr(d, "#task", "data-state") == "RUNNING", "the retried task RUNNING on the page")
    until(driver, lambda d: text(d, "#log-status") == "following" and "first line" in text(d, "#log"),
          "the new attempt's log followed")

    # the nodes: slots, facts, etcd members. From here on, the pages left behind (kept for the
    # back button) must have closed their streams: with six still open the browser would wait
    # for a free connection to this server before the seventh page (the phone's) could load
    driver.get(web.url + "/ui/nodes")
    until(driver, lambda d: css(d, "#node-n0") is not None, "the node's card")
    until(driver, lambda d: "1 running of 4 slots" in text(d, "#node-n0"),  # its node key says so within a second
          "the node's card counts the running task")
    assert css(driver, f"#node-n0 a.chip[href='/ui/tasks/{follow}']") is not None, "its running task, linked"
    assert shared_etcd.endpoint.rsplit(":", 1)[1] in text(driver, "table")
    shots(driver, "nodes")

    # templates and schedules with the next fire time
    driver.get(web.url + "/ui/schedules")
    until(driver, lambda d: "nightly-report" in text(d, "#schedule-nightly"), "the schedule")
    assert re.search(r"in \d", text(driver, "#schedule-nightly .next")), text(driver, "#schedule-nightly")
    assert "the nightly numbers" in text(driver, "#template-nightly-report")
    shots(driver, "schedules")

    # a phone: one column, nothing wider than the screen
    driver.set_window_size(*PHONE)
    driver.get(f"{web.url}/ui/jobs/{job}")
    until(driver, lambda d: css(d, row(gated)) is not None, "the job page on a phone")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    inner = driver.execute_script("return window.innerWidth")
    assert width <= inner, f"the page is {width}px wide on a {inner}px screen"
    shots(driver, "phone-job")
    driver.set_window_size(*LAPTOP)

    # errors name the object
    driver.get(web.url + "/ui/jobs/0000000000zzzzzz")
    assert "Not found" in text(driver, "h1")
    assert "0000000000zzzzzz" in text(driver, ".message")
    shots(driver, "not-found")
    driver.get("about:blank")  # the pages' streams close before the server stops


def post_form(url: str, body: str, **headers: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body.encode(), headers={"Accept": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def get_page(url: str, user: str = "", password: str = "") -> tuple[int, str]:
    req = urllib.request.Request(url, headers=basic(user, password) if user else {})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_buttons_refuse_bad_input_and_stale_etags_in_words_and_write_nothing(client: Client, web: WebServer):
    job = client.post({"name": "still", "paused": True, "layers": [{"tasks": [sh("true")]}]})
    task = f"{job}.0.0"
    before = client.task(task)
    status, res = post_form(f"{web.url}/ui/act/retry/{task}", "etag=1")
    assert status == 409 and not res["ok"] and res["stale"]
    assert f"now PENDING at etag {before['etag']}" in res["message"], res
    status, res = post_form(f"{web.url}/ui/act/explode/{task}", "")
    assert status == 400 and "action" in res["message"]
    status, res = post_form(f"{web.url}/ui/act/pause/{task}", "etag=soon")
    assert status == 400 and "etag" in res["message"] and "'soon'" in res["message"]
    status, res = post_form(f"{web.url}/ui/act/pause/{job}.0.9", "")
    assert status == 404 and f"{job}.0.9" in res["message"]
    status, res = post_form(f"{web.url}/ui/act/pause/{task}", "", Origin="http://elsewhere.example")
    assert status == 403 and "elsewhere.example" in res["message"], "another site's page may not steer"
    assert client.task(task)["etag"] == before["etag"], "nothing was written"
    status, res = post_form(f"{web.url}/ui/act/pause/{task}", f"etag={before['etag']}")
    assert status == 200 and res["ok"] and "paused" in res["message"]
    assert client.task(task)["paused_at"]

    status, body = get_page(f"{web.url}/ui/tasks/{job}.0.7")
    assert status == 404 and f"{job}.0.7" in body
    status, body = get_page(f"{web.url}/ui/jobs/no-such-job")
    assert status == 404 and "no-such-job" in body
    status, body = get_page(f"{web.url}/ui/nowhere")
    assert status == 404 and "/ui/nowhere" in body


def test_a_100000_task_job_opens_in_the_browser_in_under_a_second(client: Client, web: WebServer, browser):
    tasks = 100_000
    job = client.post({"name": "huge", "layers": [{"name": "all", "tasks": [
        {"name": f"t{n}", "cmd": ["true"]} for n in range(tasks)]}]})
    # a fresh server compiles a page's templates on its first render (once per process): people
    # open pages of a server that has served that page before
    assert get_page(f"{web.url}/ui/jobs/{job}")[0] == 200
    for address in (f"/ui/jobs/{job}", f"/ui/jobs/{job}?after={job}.0.74999"):
        browser.get(web.url + address)
        took = browser.execute_script(
            "var t = performance.getEntriesByType('navigation')[0]; return t.domContentLoadedEventEnd - t.startTime")
        assert took < 1000, f"{address} took {took:.0f} ms to open"
        rows = browser.execute_script("return document.querySelectorAll('tr.task-row').length")
        assert rows == 50, rows
    assert "tasks 75000–75049 of 100000" in text(browser, ".pager")
    assert f"0 / {tasks} done" in text(browser, "#job")
    browser.get("about:blank")


class FakeSubscription:
    """A feed subscription the test feeds by hand (the channel's only view of the feed)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = False

    def __aiter__(self) -> "FakeSubscription":
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.queue.get()

    async def aclose(self) -> None:
        self.closed = True


def test_one_channel_renders_a_page_for_every_browser_and_coalesces_changes():
    from conductor.web.ui_channel import Channel

    async def scenario() -> None:
        renders: list[float] = []

        async def render() -> tuple[str, bool]:
            renders.append(asyncio.get_running_loop().time())
            return f"render {len(renders)}", True

        subscription, forgotten = FakeSubscription(), []
        channel = Channel(subscription, render, 0.2, forgotten.append)
        browsers = [channel.join() for _ in range(20)]
        await asyncio.wait_for(browsers[-1].ready.wait(), 5)
        assert len(renders) == 1 and {b.take()[0] for b in browsers} == {"render 1"}, "one render for twenty"

        for n in range(200):  # a burst of changes: a few renders, not one each
            subscription.queue.put_nowait({"kind": "changed"})
        await asyncio.sleep(0.6)
        assert 2 <= len(renders) <= 4, renders
        assert all(b.take()[0] == f"render {len(renders)}" for b in browsers), "everyone has the newest"
        assert all(later - earlier >= 0.19 for earlier, later in zip(renders, renders[1:])), "at most one per interval"

        for b in browsers:
            channel.leave(b)
        await asyncio.sleep(0.05)
        assert forgotten == [channel] and subscription.closed, "the last browser gone: the feed is left"

    asyncio.run(scenario())


def test_a_channel_whose_page_is_gone_tells_its_browsers_and_stops():
    from conductor.web.ui_channel import Channel

    async def scenario() -> None:
        async def render() -> tuple[str, bool]:
            return "event: gone\ndata: no job j\n\n", False

        subscription, forgotten = FakeSubscription(), []
        channel = Channel(subscription, render, 0.2, forgotten.append)
        browser = channel.join()
        await asyncio.wait_for(browser.ready.wait(), 5)
        assert browser.take() == ("event: gone\ndata: no job j\n\n", False)
        await asyncio.sleep(0.05)
        assert forgotten == [channel] and subscription.closed

    asyncio.run(scenario())


def test_a_live_page_watches_only_its_keys_and_decodes_nothing(client: Client):
    """Store.watch's exact and bare modes, and a KeyWatch telling its page of a write under its
    keys (real etcd)."""
    from conductor.web.feed import CHANGED, KeyWatch

    store, k = client.store, client.keys
    start = store.revision() + 1
    store.put(k.meta("web-one-more"), b"x")  # in the prefix meta/web-one, not the exact key
    store.put(k.meta("web-one"), b"x")
    exact = store.watch(k.meta("web-one"), start, exact=True)
    first = next(batch for batch in exact if batch.events)  # (after the watch's "created" answer)
    exact.cancel()
    assert [ev.kv.key for ev in first.events] == [k.meta("web-one")]
    bare = store.watch(k.meta("web-one"), start, bare=True)
    batches = []
    for batch in bare:
        batches.append(batch)
        if sum(b.changes for b in batches) >= 2:
            break
    bare.cancel()
    assert sum(b.changes for b in batches) == 2 and not any(b.events for b in batches)

    async def scenario() -> None:
        watch = KeyWatch(store, [(k.meta("web-page/"), False)], store.revision() + 1, hold=0.5)
        try:
            await asyncio.get_running_loop().run_in_executor(None, store.put, k.meta("web-page/x"), b"1")
            assert await asyncio.wait_for(watch.__anext__(), 10) == CHANGED
            # while its watch rests after a change (hold), a write is not lost: it comes after the rest
            await asyncio.get_running_loop().run_in_executor(None, store.put, k.meta("web-page/y"), b"2")
            assert await asyncio.wait_for(watch.__anext__(), 10) == CHANGED
        finally:
            await watch.aclose()

    asyncio.run(scenario())


def login(driver: Any, user: str, password: str) -> None:
    """Every request of the browser from now on carries HTTP Basic credentials (as after the
    browser's login dialog), the live streams' included."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def test_with_etcd_auth_a_user_logs_in_follows_their_own_jobs_and_is_refused_anothers(tmp_path: Path, nodes: list[Node],
                                                                                    browser, shots):
    """etcd auth on (``conductor auth enable``, ``conductor user add``), the UI served by a node's
    own ``--http``: alice logs in, sees her jobs and not bob's, follows hers live (through her own
    etcd user's watches), and bob's job page says permission denied. A wrong password is a 401
    that makes the browser ask again."""
    etcd = EtcdServer(tmp_path / "etcd" / "data", "webauth").start()
    try:
        ns, common = "/team/", ["--etcd", etcd.endpoint, "--namespace", "/team/"]
        pw = {name: tmp_path / f"{name}.pw" for name in ("ada", "alice", "bob", "node")}
        for name in ("ada", "alice", "bob"):
            pw[name].write_text(f"{name}-pw\n")
        run = conductor_cli("auth", "enable", "--admin", "ada", "--admin-password-file", str(pw["ada"]),
                            "--node-password-file", str(pw["node"]), *common)
        assert run.returncode == 0, run.stderr
        for name in ("alice", "bob"):
            run = conductor_cli("user", "add", name, "--new-password-file", str(pw[name]), *common,
                                "--user", "ada", "--password-file", str(pw["ada"]))
            assert run.returncode == 0, run.stderr
        port = free_port()
        node = Node(etcd.endpoint, ns, "n0", tmp_path / "nodes", slots=2,
                    extra=["--user", "conductor", "--password-file", str(pw["node"]), "--http", f"127.0.0.1:{port}"])
        nodes.append(node.start())
        node.wait_ready()
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: get_page(url + "/healthz")[0] == 200, 30, what="the node's web server")

        gate = tmp_path / "gate"
        def user(name: str) -> Client:
            return Client(etcd=etcd.endpoint, namespace=ns, credentials=Credentials(user=name, password_file=str(pw[name])))

        with user("alice") as alice, user("bob") as bob:
            mine = alice.post({"name": "alices-job", "layers": [{"tasks": [
                sh(f"while [ ! -e {gate} ]; do sleep 0.1; done", name="gated")]}]})
            theirs = bob.post({"name": "bobs-job", "layers": [{"tasks": [sh("true")]}]})
            wait_for(lambda: alice.task(f"{mine}.0.0")["state"] == "RUNNING", 30, what="alice's task running")

        status, body = get_page(url + "/ui/")
        assert status == 401 and "Log in" in body, "no login: a page that asks for one"
        login(browser, "alice", "alice-pw")
        browser.get(url + "/ui/")
        until(browser, lambda d: "alices-job" in text(d, f"#job-{mine}"), "alice's job in her list")
        assert css(browser, f"#job-{theirs}") is None and "bobs-job" not in text(browser, "main"), "not bob's"

        browser.get(f"{url}/ui/jobs/{mine}")
        until(browser, lambda d: text(d, "#live-word") == "live", "the live stream open, as alice")
        assert attr(browser, row(f"{mine}.0.0"), "data-state") == "RUNNING"
        gate.touch()
        until(browser, lambda d: attr(d, row(f"{mine}.0.0"), "data-state") == "COMPLETED", "alice's task COMPLETED live")

        browser.get(f"{url}/ui/jobs/{theirs}")
        assert "Permission denied" in text(browser, "h1")
        assert theirs in text(browser, ".message") and "permission denied" in text(browser, ".message").lower()
        shots(browser, "permission-denied")
        status, body = get_page(f"{url}/ui/jobs/{theirs}", "alice", "alice-pw")
        assert status == 403 and f"job {theirs}" in body, body
        browser.get("about:blank")

        # a wrong password: a 401 that makes the browser ask for the login again
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{url}/ui/nodes", headers=basic("alice", "wrong")), timeout=20)
        assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Basic")
    finally:
        etcd.stop()
