// Conductor's web UI: live fragments over server-sent events, the buttons, relative times.
// No framework and nothing fetched from elsewhere: this file and ui.css are all there is.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var toggle = document.getElementById("live-toggle");
  var dot = document.getElementById("live-dot");
  var word = document.getElementById("live-word");
  var logPre = document.getElementById("log");
  var flashBox = document.getElementById("flash");
  var source = null, logSource = null, logEnded = false;

  function status(state, text) {
    if (!dot) return;
    dot.className = "dot" + (state ? " " + state : "");
    word.textContent = text;
  }

  function banner(text) {
    var b = document.getElementById("gone");
    if (!b) {
      b = document.createElement("div");
      b.id = "gone"; b.className = "banner";
      live.parentNode.insertBefore(b, live);
    }
    b.textContent = text;
  }

  // the page's live part: the server sends the whole fragment again when etcd says it changed
  function openLive() {
    if (!live || !live.dataset.live || source) return;
    source = new EventSource(live.dataset.live);
    source.addEventListener("open", function () { status("on", "live"); });
    source.addEventListener("fragment", function (e) {
      // what the reader opened stays open across the swap
      var open = Array.prototype.map.call(live.querySelectorAll("details[open][id]"), function (d) { return d.id; });
      live.innerHTML = e.data;
      open.forEach(function (id) { var d = document.getElementById(id); if (d) d.open = true; });
      relativeTimes();
      var task = document.getElementById("task");
      if (logPre && logEnded && task && (task.dataset.state === "RUNNING" || task.dataset.state === "QUEUED")) {
        logEnded = false;  // retried: follow the new attempt's log
        openLog();
      }
    });
    source.addEventListener("gone", function (e) {
      banner(e.data + " (reload to see the page again)");
      closeLive();
    });
    source.addEventListener("error", function () { status("broken", "reconnecting"); });
  }

  function closeLive() {
    if (source) { source.close(); source = null; }
    status("", "paused");
  }

  // a task's log: the stored tail first, then what the running task adds
  function openLog() {
    if (!logPre || logSource || logEnded) return;
    var fresh = true;
    logSource = new EventSource(logPre.dataset.follow);
    logSource.addEventListener("open", function () {
      fresh = true;
      var s = document.getElementById("log-status");
      if (s && !logEnded) s.textContent = "following";
    });
    logSource.addEventListener("log", function (e) {
      if (fresh) { logPre.textContent = ""; fresh = false; }  // the stream starts with the whole tail
      var atEnd = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
      logPre.appendChild(document.createTextNode(JSON.parse(e.data)));
      if (atEnd) logPre.scrollTop = logPre.scrollHeight;  // follow, unless the reader scrolled up
    });
    function end(e) {
      logEnded = true;
      var s = document.getElementById("log-status");
      if (s) s.textContent = e.data;
      logSource.close(); logSource = null;
    }
    logSource.addEventListener("end", end);
    logSource.addEventListener("gone", end);
  }

  function closeLog() {
    if (logSource) { logSource.close(); logSource = null; }
  }

  if (toggle) {
    toggle.addEventListener("change", function () {
      if (toggle.checked) { openLive(); openLog(); } else { closeLive(); closeLog(); }
    });
  }

  // Streams only while the page is seen: a browser opens at most 6 connections to one server
  // (HTTP/1.1), so hidden tabs and pages kept for the back button must not hold theirs. Coming
  // back, a stream starts with the page's current fragment: nothing is missed.
  function following() { return (!toggle || toggle.checked) && !document.hidden; }
  document.addEventListener("visibilitychange", function () {
    if (following()) { openLive(); openLog(); } else { closeLive(); closeLog(); }
  });
  window.addEventListener("pagehide", function () { closeLive(); closeLog(); });
  window.addEventListener("pageshow", function (e) {
    if (e.persisted && following()) { openLive(); openLog(); }
  });

  function flash(text, ok, stale) {
    var box = document.createElement("div");
    box.className = "flash " + (ok ? "ok" : "bad");
    var close = document.createElement("button");
    close.className = "close"; close.type = "button"; close.textContent = "×"; close.title = "dismiss";
    close.addEventListener("click", function () { box.remove(); });
    box.appendChild(close);
    box.appendChild(document.createTextNode(text));
    if (stale) {
      var again = document.createElement("a");
      again.className = "reload"; again.href = location.href; again.textContent = "Reload";
      box.appendChild(again);
    }
    flashBox.innerHTML = "";
    flashBox.appendChild(box);
  }

  // the buttons: post the etag the page shows; a stale one comes back explained, nothing done
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form.classList || !form.classList.contains("act")) return;
    e.preventDefault();
    var action = form.dataset.action, id = form.dataset.id;
    if ((action === "kill" || action === "skip") &&
        !window.confirm(action + " " + id + "? Running tasks are stopped.")) return;
    var button = form.querySelector("button");
    button.disabled = true;
    var body = new URLSearchParams(new FormData(form));
    body.set("back", location.pathname + location.search);
    fetch(form.action, {method: "POST", body: body,
                        headers: {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}})
      .then(function (r) { return r.json(); })
      .then(function (res) { flash(res.message, res.ok, res.stale); })
      .catch(function (err) { flash(action + " " + id + " failed: " + err, false); })
      .then(function () { button.disabled = false; });
  });

  // "5s ago" stays true between updates; this reads no data, it only rewrites the words
  function ago(seconds) {
    var s = Math.abs(seconds), text;
    if (s < 10) text = s.toFixed(1) + "s";
    else if (s < 60) text = Math.round(s) + "s";
    else if (s < 3600) text = Math.floor(s / 60) + "m " + ("0" + Math.floor(s % 60)).slice(-2) + "s";
    else if (s < 172800) text = Math.floor(s / 3600) + "h " + ("0" + Math.floor((s % 3600) / 60)).slice(-2) + "m";
    else text = Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
    return seconds >= 0 ? text + " ago" : "in " + text;
  }

  function relativeTimes() {
    var now = Date.now() / 1000;
    document.querySelectorAll("time[data-ts]").forEach(function (t) {
      t.textContent = ago(now - parseFloat(t.dataset.ts));
    });
  }

  setInterval(relativeTimes, 5000);
  if (following()) { openLive(); openLog(); }
})();
