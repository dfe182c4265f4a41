#!/usr/bin/env python3
"""A stand-in "Kafka service" for the quickstart and the integration tests.

It reads the `listeners` of a server.properties exactly as a broker would at start-up and opens a
TCP listener on each, so kreach's restart-and-verify loop runs against real sockets: a listener
whose port is taken makes the "broker" fail to start, like Kafka does.

  fake-kafka.py restart PROPERTIES STATE_DIR   stop the running instance, start one on PROPERTIES
  fake-kafka.py stop STATE_DIR                 stop it
Every restart appends "start_ns end_ns ok|failed" to STATE_DIR/restarts.log.
FAKE_KAFKA_SKIP=NAME[,NAME] starts without those listeners: a broker that comes up but does not serve
a listener, for testing health checks.
"""
import os
import signal
import socket
import subprocess
import sys
import time


def read_properties(path):
    """Java properties: continuation lines joined, first '=', ':' or whitespace separates."""
    values = {}
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    logical, pending = [], ""
    for line in lines:
        stripped = line.lstrip()
        if not pending and (not stripped or stripped[0] in "#!"):
            continue
        text = pending + stripped
        backslashes = len(text) - len(text.rstrip("\\"))
        if backslashes % 2 == 1:
            pending = text[:-1]
            continue
        pending = ""
        logical.append(text)
    for text in logical:
        key, i = "", 0
        while i < len(text) and text[i] not in "=: \t":
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
            key += text[i]
            i += 1
        rest = text[i:].lstrip(" \t")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t")
        values[key] = rest.replace("\\:", ":").replace("\\=", "=")
    return values


def listener_addresses(props):
    addresses = []
    for entry in filter(None, (e.strip() for e in props.get("listeners", "").split(","))):
        name, _, hostport = entry.partition("://")
        host, _, port = hostport.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        addresses.append((name, host, int(port)))
    return addresses


def pid_path(state_dir):
    return os.path.join(state_dir, "fake-kafka.pid")


def is_gone(pid):
    """Exited, or a zombie nobody reaps yet (our parent may be a shell that never waits)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def stop(state_dir):
    try:
        with open(pid_path(state_dir)) as handle:
            pid = int(handle.read().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(250):
            if is_gone(pid):
                break
            time.sleep(0.02)
    except ProcessLookupError:
        pass
    os.unlink(pid_path(state_dir))


def serve(specs):
    sockets = []
    for spec in specs:
        host, _, port = spec.rpartition(":")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((host, int(port)))
        except OSError as error:
            print(f"fake-kafka: cannot bind {spec}: {error}", file=sys.stderr, flush=True)
            sys.exit(1)
        sock.listen(64)
        sock.setblocking(False)
        sockets.append(sock)
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        for sock in sockets:
            try:
                conn, _ = sock.accept()
                conn.close()
            except BlockingIOError:
                pass
        time.sleep(0.01)


def restart(properties, state_dir):
    start = time.time_ns()
    stop(state_dir)
    skip = set(filter(None, os.environ.get("FAKE_KAFKA_SKIP", "").split(",")))
    listeners = listener_addresses(read_properties(properties))
    specs = [f"{host}:{port}" for name, host, port in listeners if name not in skip]
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "serve", *specs],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    line = child.stdout.readline().strip()
    ok = line == "ready"
    if ok:
        with open(pid_path(state_dir), "w") as handle:
            handle.write(str(child.pid))
    with open(os.path.join(state_dir, "restarts.log"), "a") as log:
        log.write(f"{start} {time.time_ns()} {'ok' if ok else 'failed'}\n")
    if not ok:
        sys.stderr.write(child.stderr.read())
        sys.exit(1)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "restart":
        restart(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "stop":
        stop(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
