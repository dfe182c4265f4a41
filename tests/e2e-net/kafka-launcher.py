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

SSL listeners (`listener.security.protocol.map` says NAME:SSL): `tansu proxy` has no TLS options
(tansu's broker has, but only the proxy gives the shared storage above), so the listener's TLS is
terminated by a relay in front of its proxy:

    client --TLS--> relay on BIND:PORT --TCP--> tansu proxy on 127.0.0.1:<free port> --> store

The relay (`kafka-launcher.py relay`, Python's `ssl` with asyncio, one process per SSL listener)
loads `listener.name.<name>.ssl.keystore.location` (type PEM: the private key, then the certificate
chain, in one file — what kreach writes) and relays bytes both ways, unchanged; the proxy still
advertises ADVERTISED:PORT, so Metadata sends clients back to the relay's endpoint. Why this is
faithful for what the tests check: the relay is this broker's TLS layer. A client connects to the
advertised endpoint and gets exactly the certificate chain the agent installed, from the key the
agent generated, and verifies it against the CA it was given, with hostname verification, before a
single Kafka byte flows — as with a real broker, where the same key store is loaded by the same
listener. A restart starts a new relay, which reads the key store again (a real broker reads it at
start-up too). What differs: TLS is OpenSSL through Python, not the JVM's JSSE (protocol versions,
cipher suites and error texts may differ), Kafka's dynamic key store reload (AlterConfigs) does not
exist here, client authentication (`ssl.client.auth` other than none) and SASL_* are refused, and the
truststore kreach writes is not used (nothing here checks client certificates). Non-SSL listeners
are served exactly as before, by the proxy alone.

A broken config really fails: a listener whose address cannot be bound (not an address of the host,
port taken), a listener without an advertised endpoint, a SASL_* protocol, an SSL listener without a
key store or with one that cannot be loaded — `restart` stops what it started and exits 1 with the
reason on stderr (the agent puts it in its report), and `status` exits 1 when any recorded proxy or
relay died or stopped accepting connections.

Usage:
    kafka-launcher.py restart --properties FILE --state DIR --tansu BIN --origin tcp://HOST:PORT
    kafka-launcher.py status --state DIR
    kafka-launcher.py stop --state DIR
    kafka-launcher.py relay --name NAME --listen HOST:PORT --keystore FILE --target HOST:PORT
        (started by restart; not for direct use)

State kept in DIR: proxies.json (pid, start time and endpoint of each running proxy and relay), one
log per listener (NAME.log for the proxy, NAME-tls.log for the relay), and restarts.log (one line
per restart: start_ns end_ns ok|failed), which tests read to tell which brokers were restarted.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import ssl
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
    """Every listener a client can use, as a dict: name, bind host and port, advertised host and port,
    protocol, and for SSL listeners the key store to serve."""
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
        if protocol not in ("PLAINTEXT", "SSL"):
            raise LauncherError(
                f"listener {name}: security protocol {protocol} is not supported by this test broker"
                + (" (SASL is not implemented here)" if protocol.startswith("SASL_") else "")
            )
        if port in ports:
            raise LauncherError(f"listeners {ports[port]} and {name} both use port {port}")
        ports[port] = name
        if name in advertised:
            adv_host, adv_port = advertised[name]
        elif host not in ("", "0.0.0.0", "::"):
            adv_host, adv_port = host, port
        else:
            raise LauncherError(f"listener {name}: binds {host or '0.0.0.0'} and has no advertised.listeners entry")
        listener = {
            "name": name, "host": host or "0.0.0.0", "port": port,
            "adv_host": adv_host, "adv_port": adv_port, "protocol": protocol, "keystore": None,
        }
        if protocol == "SSL":
            listener["keystore"] = ssl_keystore(props, name)
        result.append(listener)
    return result


def ssl_setting(props, name, key):
    """A listener's SSL setting: `listener.name.<lower name>.ssl.KEY`, else the broker-wide `ssl.KEY`."""
    return props.get(f"listener.name.{name.lower()}.ssl.{key}", props.get(f"ssl.{key}"))


def ssl_keystore(props, name):
    """The PEM key store of SSL listener `name`; what this broker cannot serve is refused here."""
    prefix = f"listener.name.{name.lower()}.ssl"
    location = ssl_setting(props, name, "keystore.location")
    if not location:
        raise LauncherError(f"listener {name}: SSL without a key store ({prefix}.keystore.location is not set)")
    kind = ssl_setting(props, name, "keystore.type") or "JKS"
    if kind.upper() != "PEM":
        raise LauncherError(f"listener {name}: key store type {kind} is not supported by this test broker (PEM only)")
    client_auth = (ssl_setting(props, name, "client.auth") or "none").lower()
    if client_auth != "none":
        raise LauncherError(
            f"listener {name}: ssl.client.auth={client_auth} is not supported by this test broker (none only)"
        )
    return location


def server_context(name, keystore):
    """The TLS server context of a listener, from its key store (private key and certificate chain in
    one PEM file). Fails with a reason that never quotes the file's content."""
    try:
        with open(keystore, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as error:
        raise LauncherError(f"listener {name}: cannot read the key store {keystore}: {error.strerror}") from None
    missing = [what for what, marker in (("private key", "PRIVATE KEY-----"), ("certificate", "BEGIN CERTIFICATE-----"))
               if marker not in text]
    if missing:
        raise LauncherError(f"listener {name}: the key store {keystore} has no {' and no '.join(missing)}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=keystore, keyfile=keystore)
    except (ssl.SSLError, OSError) as error:
        raise LauncherError(f"listener {name}: cannot load the key store {keystore}: {error}") from None
    return context


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
    # A record without a start time is of a process that exited (and was reaped) before it was seen.
    alive = [p for p in proxies if p["start_time"] is not None and start_time(p["pid"]) == p["start_time"]]
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


def free_loopback_port():
    """A port nothing listens on at 127.0.0.1 (this host's own loopback: its network namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(args, name, role, command, host, port, log_name):
    """Start `command` in a session of its own, logging to DIR/log_name, and wait until host:port accepts
    connections. Returns its record; raises LauncherError(message, record) when it exits or times out."""
    log_path = os.path.join(args.state, log_name)
    log = open(log_path, "ab")
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
    )
    log.close()
    record = {"name": name, "role": role, "pid": process.pid, "start_time": None, "bind": f"{host}:{port}"}
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        record["start_time"] = record["start_time"] or start_time(process.pid)
        code = process.poll()
        if code is not None:
            with open(log_path, "rb") as handle:
                tail = handle.read()[-400:].decode("utf-8", "replace").strip()
            raise LauncherError(
                f"listener {name}: {role} on {host}:{port} exited with {code} before accepting connections"
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


def start_listener(args, listener, running):
    """Start what serves `listener`, appending each started process's record to `running` (so that a
    failure stops it too). PLAINTEXT: a tansu proxy on BIND:PORT. SSL: a tansu proxy on a free loopback
    port and the TLS relay on BIND:PORT in front of it."""
    name, host, port = listener["name"], listener["host"], listener["port"]
    advertised = f"{listener['adv_host']}:{listener['adv_port']}"
    tls = listener["protocol"] == "SSL"
    proxy_host, proxy_port = ("127.0.0.1", free_loopback_port()) if tls else (host, port)
    command = [
        args.tansu, "proxy",
        "--listener-url", f"tcp://{proxy_host}:{proxy_port}",
        "--advertised-listener-url", f"tcp://{advertised}",
        "--origin-url", args.origin,
    ]
    try:
        record = start_process(args, name, "tansu proxy", command, proxy_host, proxy_port, f"{name}.log")
    except LauncherError as error:
        running.append(error.args[1])
        raise LauncherError(error.args[0]) from None
    record["advertised"] = advertised
    running.append(record)
    if not tls:
        return f"{name}: listening on {host}:{port}, advertising {advertised} (pid {record['pid']})"
    command = [
        sys.executable, os.path.abspath(__file__), "relay",
        "--name", name, "--listen", f"{host}:{port}",
        "--keystore", listener["keystore"], "--target", f"{proxy_host}:{proxy_port}",
    ]
    try:
        relay = start_process(args, name, "TLS relay", command, host, port, f"{name}-tls.log")
    except LauncherError as error:
        running.append(error.args[1])
        raise LauncherError(error.args[0]) from None
    relay["advertised"] = advertised
    running.append(relay)
    return (
        f"{name}: listening on {host}:{port} (SSL, key store {listener['keystore']}, relay pid {relay['pid']}), "
        f"advertising {advertised} (tansu proxy pid {record['pid']} on {proxy_host}:{proxy_port})"
    )


def restart(args):
    os.makedirs(args.state, exist_ok=True)
    started_ns = time.time_ns()
    ok = False
    try:
        stop_proxies(load_state(args.state))
        save_state(args.state, [])
        listeners = desired_listeners(read_properties(args.properties))
        for listener in listeners:
            check_bindable(listener["name"], listener["host"], listener["port"])
            if listener["keystore"]:
                server_context(listener["name"], listener["keystore"])  # fail before starting anything
        running, lines = [], []
        try:
            for listener in listeners:
                lines.append(start_listener(args, listener, running))
        except LauncherError:
            stop_proxies(running)
            raise
        save_state(args.state, running)
        ok = True
        for line in lines:
            print(line)
    finally:
        with open(os.path.join(args.state, "restarts.log"), "a", encoding="utf-8") as handle:
            handle.write(f"{started_ns} {time.time_ns()} {'ok' if ok else 'failed'}\n")


def status(args):
    processes = load_state(args.state)
    if not processes:
        raise LauncherError("not running (no listeners started)")
    for process in processes:
        role = process.get("role", "tansu proxy")
        if start_time(process["pid"]) != process["start_time"]:
            raise LauncherError(f"listener {process['name']}: its {role} (pid {process['pid']}) is gone")
        host, _, port = process["bind"].rpartition(":")
        if not accepts(host, int(port)):
            raise LauncherError(f"listener {process['name']}: {role} on {process['bind']} does not accept connections")


def stop(args):
    stop_proxies(load_state(args.state))
    save_state(args.state, [])


def split_endpoint(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def relay(args):
    """The TLS layer of one SSL listener: accept TLS on --listen with the key store's certificate, and
    relay the plaintext bytes both ways to --target (the listener's tansu proxy). Runs until killed."""
    context = server_context(args.name, args.keystore)
    listen_host, listen_port = split_endpoint(args.listen)
    target_host, target_port = split_endpoint(args.target)

    def note(message):
        print(f"{time.strftime('%H:%M:%S')} relay {args.name}: {message}", flush=True)

    async def pipe(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer):
        peer = client_writer.get_extra_info("peername")
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(target_host, target_port), timeout=5
            )
        except (OSError, asyncio.TimeoutError) as error:
            note(f"{peer}: cannot reach the proxy at {args.target}: {error!r}")
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    async def serve():
        server = await asyncio.start_server(
            handle, listen_host, listen_port, ssl=context, ssl_handshake_timeout=10, reuse_address=True
        )
        note(f"TLS on {args.listen} with the key store {args.keystore}, relaying to {args.target}")
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


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
    tls = sub.add_parser("relay")
    tls.add_argument("--name", required=True)
    tls.add_argument("--listen", required=True, help="HOST:PORT to accept TLS on")
    tls.add_argument("--keystore", required=True, help="PEM: private key, then certificate chain")
    tls.add_argument("--target", required=True, help="HOST:PORT of the listener's tansu proxy")
    args = parser.parse_args()
    try:
        {"restart": restart, "status": status, "stop": stop, "relay": relay}[args.command](args)
    except LauncherError as error:
        print(f"kafka-launcher: {error.args[0]}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        print(f"kafka-launcher: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
