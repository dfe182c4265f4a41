#!/usr/bin/env python3
"""Measurements for benches/fleet/run.sh: an independent hosts-file poller and /proc samplers.

  measure.py poll LIST NEEDLE_REGEX OUT_JSON [--deadline S] [--interval-ms MS] [--ready FILE]
      Watch every file named in LIST (one path a line) until each holds a line matching
      NEEDLE_REGEX, or the deadline passes. Each sweep stats every file still waiting and reads
      only those whose (inode, mtime, size, ctime) changed since the last sweep, so a sweep of 200
      files costs about a millisecond. Writes the wall-clock time (time.time()) at which each file
      was first seen holding the line. Touches FILE once the first sweep is done (all files read
      once), so the caller starts the change only after the poller has seen the old state.
  measure.py sample SECONDS LABEL=PID... [--group LABEL=PIDFILE]
      Reads utime+stime (/proc/PID/stat) of every PID at the start and the end of SECONDS, and
      VmRSS (/proc/PID/status) every second; prints one JSON object: per label the CPU % of one
      core over the window, RSS at the end and its peak. A group (a file of PIDs) is summed.
  measure.py rss PID        VmRSS of PID in KiB.
  measure.py since POLL_JSON T0
      The poll's first and last times in seconds after T0 (a wall-clock time), its own CPU
      seconds and its sweeps, on one line.
  measure.py median X...    The median of the numbers (printed with 3 decimals), "n/a" if none.

Every loop here is bounded by a count and a deadline.
"""
import json
import os
import re
import statistics
import sys
import time


def poll(list_path, needle, out_path, deadline_s=120.0, interval_ms=2.0, ready=None):
    pattern = re.compile(needle, re.MULTILINE)
    with open(list_path, encoding="utf-8") as handle:
        paths = [line.strip() for line in handle if line.strip()]
    seen_at = {}
    signature = {}
    start = time.time()
    deadline = start + deadline_s
    sweeps = 0
    # At most this many sweeps, whatever the interval: the loop is bounded in count and time.
    max_sweeps = int(deadline_s * 1000 / max(interval_ms, 0.1)) + 10
    waiting = list(paths)
    while waiting and sweeps < max_sweeps:
        sweeps += 1
        still = []
        for path in waiting:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                still.append(path)
                continue
            sig = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)
            if signature.get(path) == sig:
                still.append(path)
                continue
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
            except FileNotFoundError:
                still.append(path)
                continue
            now = time.time()
            signature[path] = sig
            if pattern.search(text):
                seen_at[path] = now
            else:
                still.append(path)
        waiting = still
        if sweeps == 1 and ready:
            with open(ready, "w", encoding="utf-8") as handle:
                handle.write(f"{len(seen_at)}\n")
        if time.time() > deadline:
            break
        if waiting:
            time.sleep(interval_ms / 1000.0)
    result = {
        "files": len(paths),
        "found": len(seen_at),
        "first": min(seen_at.values()) if seen_at else None,
        "last": max(seen_at.values()) if seen_at else None,
        "sweeps": sweeps,
        "poll_started": start,
        "poll_seconds": time.time() - start,
        "interval_ms": interval_ms,
        # The poller's own CPU while it watched: it shares the cores with the agents it times.
        "cpu_seconds": round(sum(os.times()[:2]), 3),
        "missing": sorted(set(paths) - set(seen_at))[:5],
    }
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0 if len(seen_at) == len(paths) else 1


def cpu_ticks(pid):
    """utime + stime of PID in clock ticks, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # After the command: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def sample(seconds, singles, groups):
    tick = os.sysconf("SC_CLK_TCK")
    tracked = {label: [pid] for label, pid in singles}
    for label, pid_file in groups:
        with open(pid_file, encoding="ascii") as handle:
            tracked[label] = [int(line) for line in handle if line.strip()]
    start_ticks = {label: [cpu_ticks(pid) for pid in pids] for label, pids in tracked.items()}
    peak = {label: 0 for label in tracked}
    started = time.monotonic()
    for _ in range(int(seconds) + 1):
        for label, pids in tracked.items():
            total = sum(rss_kib(pid) or 0 for pid in pids)
            peak[label] = max(peak[label], total)
        remaining = started + seconds - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(1.0, remaining))
    elapsed = time.monotonic() - started
    result = {"seconds": round(elapsed, 2), "clock_tick_hz": tick}
    for label, pids in tracked.items():
        end_ticks = [cpu_ticks(pid) for pid in pids]
        alive = [
            (a, b) for a, b in zip(start_ticks[label], end_ticks) if a is not None and b is not None
        ]
        used = sum(b - a for a, b in alive) / tick
        rss_end = sum(rss_kib(pid) or 0 for pid in pids)
        result[label] = {
            "processes": len(pids),
            "alive": len(alive),
            "cpu_seconds": round(used, 3),
            "cpu_percent": round(100.0 * used / elapsed, 3),
            "rss_kib": rss_end,
            "rss_peak_kib": peak[label],
        }
    print(json.dumps(result))
    return 0


def main(argv):
    if len(argv) >= 4 and argv[0] == "poll":
        options = {"--deadline": "120", "--interval-ms": "2", "--ready": None}
        rest = argv[4:]
        while rest:
            key, value, rest = rest[0], rest[1], rest[2:]
            if key not in options:
                raise SystemExit(f"poll: unknown option {key}")
            options[key] = value
        return poll(
            argv[1],
            argv[2],
            argv[3],
            float(options["--deadline"]),
            float(options["--interval-ms"]),
            options["--ready"],
        )
    if len(argv) >= 2 and argv[0] == "sample":
        singles, groups = [], []
        rest = argv[2:]
        while rest:
            if rest[0] == "--group":
                label, _, path = rest[1].partition("=")
                groups.append((label, path))
                rest = rest[2:]
            else:
                label, _, pid = rest[0].partition("=")
                singles.append((label, int(pid)))
                rest = rest[1:]
        return sample(float(argv[1]), singles, groups)
    if len(argv) == 2 and argv[0] == "rss":
        print(rss_kib(int(argv[1])) or 0)
        return 0
    if len(argv) == 3 and argv[0] == "since":
        with open(argv[1], encoding="utf-8") as handle:
            result = json.load(handle)
        t0 = float(argv[2])
        print(f"{result['first'] - t0:.3f} {result['last'] - t0:.3f} {result['cpu_seconds']:.2f} {result['sweeps']}")
        return 0
    if argv and argv[0] == "median":
        values = [float(x) for x in argv[1:] if x not in ("", "n/a")]
        print(f"{statistics.median(values):.3f}" if values else "n/a")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
