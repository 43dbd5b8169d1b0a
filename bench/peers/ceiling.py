"""Physical ceiling on this machine: no queue, no broker, just multiprocessing.

usage: ceiling.py W1|W2|W4 N CONCURRENCY
  W1: CONCURRENCY processes each loop subprocess.run(['true']) over their share of N.
  W2: 1 run, then N runs split over CONCURRENCY processes, then 1 run
      (same shape as the 3-stage workflow, zero coordination cost).
  W4: N sequential multiprocessing.Pool(CONCURRENCY).apply_async calls of a
      function that records its start time and runs `true`; reports the
      submit-to-start latency of a local process pool (floor for W4) and the
      duration of one subprocess.run(['true']).
Prints one JSON line.
"""
import multiprocessing as mp
import os
import subprocess
import sys
import time

from common import emit, median, percentile


def _loop(count, barrier):
    barrier.wait()
    for _ in range(count):
        subprocess.run(["true"], check=True)


def _fanout(n, conc):
    """Run n `true` commands on conc processes; return when all are done."""
    shares = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]
    barrier = mp.Barrier(conc + 1)
    procs = [mp.Process(target=_loop, args=(s, barrier)) for s in shares]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return t0, time.perf_counter()


def _cpu():
    """CPU seconds of this process and of its reaped descendants (the loop processes and their
    `true`s): the whole cost of the ceiling, as it has no queue, broker or store."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _ts_true(_):
    started = time.time()
    subprocess.run(["true"], check=True)
    return started


def main():
    wl, n, conc = sys.argv[1].upper(), int(sys.argv[2]), int(sys.argv[3])
    if wl == "W1":
        cpu0 = _cpu()
        t0, t1 = _fanout(n, conc)
        cpu = _cpu() - cpu0
        wall = t1 - t0
        emit({"system": "ceiling", "workload": "W1", "n": n, "concurrency": conc,
              "wall_s": round(wall, 4), "tasks_per_s": round(n / wall, 1),
              "submit_s": 0.0, "ok": True,
              "cpu_ms_per_task": {"total": round(1e3 * cpu / n, 3)}})
    elif wl == "W2":
        # processes are forked before the clock starts (same as workers that
        # are already up in the Celery run)
        shares = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]
        barrier = mp.Barrier(conc + 1)
        procs = [mp.Process(target=_loop, args=(s, barrier)) for s in shares]
        for p in procs:
            p.start()
        t0 = time.perf_counter()
        subprocess.run(["true"], check=True)          # stage 1
        barrier.wait()                                # stage 2 fan-out
        for p in procs:
            p.join()
            assert p.exitcode == 0
        subprocess.run(["true"], check=True)          # stage 3
        wall = time.perf_counter() - t0
        emit({"system": "ceiling", "workload": "W2", "n": n, "concurrency": conc,
              "total_tasks": n + 2, "wall_s": round(wall, 4),
              "tasks_per_s": round((n + 2) / wall, 1), "ok": True})
    elif wl == "W4":
        lat, rtt = [], []
        with mp.Pool(conc) as pool:
            pool.apply(_ts_true, (0,))   # warm up
            for _ in range(n):
                t_sub = time.time()
                started = pool.apply_async(_ts_true, (0,)).get()
                t_done = time.time()
                lat.append(started - t_sub)
                rtt.append(t_done - t_sub)
        dur = []
        for _ in range(n):
            a = time.perf_counter()
            subprocess.run(["true"], check=True)
            dur.append(time.perf_counter() - a)
        emit({"system": "ceiling", "workload": "W4", "n": n, "concurrency": conc,
              "lat_median_ms": round(median(lat) * 1e3, 3),
              "lat_p99_ms": round(percentile(lat, 99) * 1e3, 3),
              "rtt_median_ms": round(median(rtt) * 1e3, 3),
              "rtt_p99_ms": round(percentile(rtt, 99) * 1e3, 3),
              "true_run_median_ms": round(median(dur) * 1e3, 3), "ok": True})
    else:
        raise SystemExit("workload must be W1, W2 or W4")


if __name__ == "__main__":
    main()
