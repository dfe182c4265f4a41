#!/usr/bin/env python3
"""The "kafka service" of a broker host in the e2e-net tier.

The agent under test only writes server.properties and restarts a service; this launcher is that
service (`[service_manager] kind = "command"`, restart and status commands). It reads the
server.properties the agent wrote and serves every listener in `listeners` at its bind address,
advertising exactly what `advertised.listeners` says for that listener — what a real Kafka does.

Design: tansu (the Kafka-protocol broker used here) keeps memory storage only, has one listener per
process and node id 111, so a restart of a real tansu broker would lose every message. Instead one
shared "store" tansu broker runs in a namespace of its own (not managed by kreach, never restarted),
and each listener of a broker host is a `tansu proxy` process:

    tansu proxy --listener-url tcp://BIND:PORT --advertised-listener-url tcp://ADVERTISED:PORT
                --origin-url tcp://STORE:9092

The proxy forwards every request to the store and rewrites the broker addresses in Metadata and
FindCoordinator responses, so a client only ever sees (and connects to) the advertised endpoint:
produce, consume and consumer groups work through it (checked when this file was written). Restarting a
broker host's Kafka is restarting its proxies; acknowledged data lives in the store and survives.
What differs from a real three-broker cluster: every endpoint answers as node 111 and lists only
itself in Metadata, so a client bootstrapped with all brokers sees one broker whose address follows
the metadata it read last.

A broken config really fails: a listener whose address cannot be bound (not an address of the host,
port taken), a listener without an advertised endpoint, a non-PLAINTEXT protocol — `restart` stops
what it started and exits 1 with the reason on stderr (the agent puts it in its report), and `status`
exits 1 when any recorded proxy died or stopped accepting connections.

Usage:
    kafka-launcher.py restart --properties FILE --state DIR --tansu BIN --origin tcp://HOST:PORT
    kafka-launcher.py status --state DIR
    kafka-launcher.py stop --state DIR

State kept in DIR: proxies.json (pid, start time and endpoint of each running proxy), one log per
listener, and restarts.log (one line per restart: start_ns end_ns ok|failed), which tests read to
tell which brokers were restarted.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL = 0.05


class LauncherError(Exception):
    pass


def read_properties(path):
    """key=value lines; comments (# or !) and blank lines skipped. No continuation lines (kreach
    does not write them)."""
    props = {}
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line[0] in "#!":
                continue
            key, sep, value = line.partition("=")
            if not sep:
                key, sep, value = line.partition(":")
            props[key.strip()] = value.strip()
    return props


def parse_listener_list(value, key):
    """`NAME://host:port,...` -> {NAME: (host, port)}, in order."""
    result = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, rest = item.partition("://")
        if not sep:
            raise LauncherError(f"{key}: {item!r} is not NAME://host:port")
        host, colon, port = rest.rpartition(":")
        if not colon or not port.isdigit():
            raise LauncherError(f"{key}: {item!r} has no port")
        host = host.strip("[]")
        if name in result:
            raise LauncherError(f"{key}: listener {name} appears twice")
        result[name] = (host, int(port))
    return result


def desired_listeners(props):
    """[(name, bind_host, port, advertised_host, advertised_port)] for every listener a client can use."""
    listeners = parse_listener_list(props.get("listeners", ""), "listeners")
    if not listeners:
        raise LauncherError("listeners: no listener configured")
    advertised = parse_listener_list(props.get("advertised.listeners", ""), "advertised.listeners")
    protocols = {}
    for item in filter(None, props.get("listener.security.protocol.map", "").split(",")):
        name, _, protocol = item.partition(":")
        protocols[name.strip()] = protocol.strip()
    controller_names = {n.strip() for n in props.get("controller.listener.names", "").split(",") if n.strip()}
    result = []
    ports = {}
    for name, (host, port) in listeners.items():
        if name in controller_names:
            continue  # KRaft's own quorum listener: not served to clients here
        protocol = protocols.get(name, name if name in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL") else None)
        if protocol is None:
            raise LauncherError(f"listener {name}: no entry in listener.security.protocol.map")
        if protocol != "PLAINTEXT":
            raise LauncherError(f"listener {name}: security protocol {protocol} is not supported by this test broker")
        if port in ports:
            raise LauncherError(f"listeners {ports[port]} and {name} both use port {port}")
        ports[port] = name
        if name in advertised:
            adv_host, adv_port = advertised[name]
        elif host not in ("", "0.0.0.0", "::"):
            adv_host, adv_port = host, port
        else:
            raise LauncherError(f"listener {name}: binds {host or '0.0.0.0'} and has no advertised.listeners entry")
        result.append((name, host or "0.0.0.0", port, adv_host, adv_port))
    return result


def connect_address(host, port):
    if host in ("0.0.0.0", ""):
        return ("127.0.0.1", port)
    if host == "::":
        return ("::1", port)
    return (host, port)


def accepts(host, port, timeout=0.5):
    try:
        with socket.create_connection(connect_address(host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_bindable(name, host, port):
    """Fail with the OS's reason when the listener's address cannot be bound (not an address of this
    host, port in use): tansu proxy itself exits 0 silently in that case."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        raise LauncherError(f"listener {name}: cannot listen on {host}:{port}: {error.strerror}") from None
    finally:
        sock.close()


def start_time(pid):
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), to tell a recorded
    process from a later one that reuses its PID; None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def load_state(state):
    try:
        with open(os.path.join(state, "proxies.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return []


def save_state(state, proxies):
    path = os.path.join(state, "proxies.json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(proxies, handle)
    os.replace(path + ".tmp", path)


def stop_proxies(proxies):
    alive = [p for p in proxies if start_time(p["pid"]) == p["start_time"]]
    for proxy in alive:
        try:
            os.kill(proxy["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if start_time(p["pid"]) == p["start_time"]]
        time.sleep(POLL)
    for proxy in alive:
        try:
            os.kill(proxy["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_proxy(args, name, host, port, adv_host, adv_port):
    log_path = os.path.join(args.state, f"{name}.log")
    log = open(log_path, "ab")
    command = [
        args.tansu, "proxy",
        "--listener-url", f"tcp://{host}:{port}",
        "--advertised-listener-url", f"tcp://{adv_host}:{adv_port}",
        "--origin-url", args.origin,
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
    )
    log.close()
    record = {
        "name": name, "pid": process.pid, "start_time": None,
        "bind": f"{host}:{port}", "advertised": f"{adv_host}:{adv_port}",
    }
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        record["start_time"] = record["start_time"] or start_time(process.pid)
        code = process.poll()
        if code is not None:
            with open(log_path, "rb") as handle:
                tail = handle.read()[-400:].decode("utf-8", "replace").strip()
            raise LauncherError(
                f"listener {name}: tansu proxy on {host}:{port} exited with {code} before accepting connections"
                + (f": {tail}" if tail else ""),
                record,
            )
        if accepts(host, port):
            return record
        if time.monotonic() > deadline:
            raise LauncherError(
                f"listener {name}: nothing accepts connections on {host}:{port} after {START_TIMEOUT}s", record
            )
        time.sleep(POLL)


def restart(args):
    os.makedirs(args.state, exist_ok=True)
    started_ns = time.time_ns()
    ok = False
    try:
        stop_proxies(load_state(args.state))
        save_state(args.state, [])
        listeners = desired_listeners(read_properties(args.properties))
        for name, host, port, _, _ in listeners:
            check_bindable(name, host, port)
        running = []
        try:
            for listener in listeners:
                running.append(start_proxy(args, *listener))
        except LauncherError as error:
            message, record = error.args
            running.append(record)
            stop_proxies(running)
            raise LauncherError(message) from None
        save_state(args.state, running)
        ok = True
        for proxy in running:
            print(f"{proxy['name']}: listening on {proxy['bind']}, advertising {proxy['advertised']} (pid {proxy['pid']})")
    finally:
        with open(os.path.join(args.state, "restarts.log"), "a", encoding="utf-8") as handle:
            handle.write(f"{started_ns} {time.time_ns()} {'ok' if ok else 'failed'}\n")


def status(args):
    proxies = load_state(args.state)
    if not proxies:
        raise LauncherError("not running (no listeners started)")
    for proxy in proxies:
        if start_time(proxy["pid"]) != proxy["start_time"]:
            raise LauncherError(f"listener {proxy['name']}: its proxy (pid {proxy['pid']}) is gone")
        host, _, port = proxy["bind"].rpartition(":")
        if not accepts(host, int(port)):
            raise LauncherError(f"listener {proxy['name']}: {proxy['bind']} does not accept connections")


def stop(args):
    stop_proxies(load_state(args.state))
    save_state(args.state, [])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("restart")
    start.add_argument("--properties", required=True)
    start.add_argument("--state", required=True)
    start.add_argument("--tansu", required=True)
    start.add_argument("--origin", required=True, help="the store broker, tcp://HOST:PORT")
    for name in ("status", "stop"):
        sub.add_parser(name).add_argument("--state", required=True)
    args = parser.parse_args()
    try:
        {"restart": restart, "status": status, "stop": stop}[args.command](args)
    except LauncherError as error:
        print(f"kafka-launcher: {error.args[0]}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        print(f"kafka-launcher: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
