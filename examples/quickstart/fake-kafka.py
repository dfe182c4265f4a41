#!/usr/bin/env python3
"""A stand-in "Kafka service" for the quickstart and the integration tests.

It reads the `listeners` of a server.properties exactly as a broker would at start-up and opens a
TCP listener on each, so kreach's restart-and-verify loop runs against real sockets: a listener
whose port is taken makes the "broker" fail to start, like Kafka does. On each listener it answers
the two requests a Kafka client starts with, ApiVersions (v0) and Metadata (v1), advertising this
broker as `advertised.listeners` gives it for that listener, so a client's reachability check runs
the whole way: resolve, connect, ask Kafka who answers there.

  fake-kafka.py restart PROPERTIES STATE_DIR   stop the running instance, start one on PROPERTIES
  fake-kafka.py stop STATE_DIR                 stop it
Every restart appends "start_ns end_ns ok|failed" to STATE_DIR/restarts.log.
FAKE_KAFKA_SKIP=NAME[,NAME] starts without those listeners: a broker that comes up but does not serve
a listener, for testing health checks.
A listener with `listener.name.NAME.ssl.keystore.location` (kreach writes it for SSL/SASL_SSL) is
served over TLS with that PEM key store (key and certificate chain), as Kafka would.
FAKE_KAFKA_EIP=IP also accepts the EXTERNAL listener's connections on IP (same port), as a cloud's
1:1 NAT of an elastic IP to the broker's private address does.
IncrementalAlterConfigs (v0) sets (or deletes) this broker's dynamic configs, which DescribeConfigs
(v1) lists with source DYNAMIC_BROKER_CONFIG, as Kafka keeps them in its metadata (this stand-in
keeps them in STATE_DIR/dynamic.json, across restarts). Setting `listener.name.NAME.ssl.keystore.
location` also reloads that listener's key store for new connections without a restart, as Kafka
does when the setting is altered, even to the same path; a file it cannot load is refused with
INVALID_CONFIG and the old certificate stays. FAKE_KAFKA_NO_RELOAD=1 leaves IncrementalAlterConfigs
out of ApiVersions, as a broker that cannot reload.
AlterUserScramCredentials (v0) keeps SCRAM credentials (salt and salted password, as Kafka stores
them) in STATE_DIR/scram-users.json. A SASL_* listener (listener.security.protocol.map) takes
SaslHandshake (v0..1) and SaslAuthenticate (v0..1) with SCRAM (RFC 5802) against those credentials,
as Kafka does, and answers nothing but ApiVersions before a successful login.
"""
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
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


LOCK = threading.Lock()
API_VERSIONS, METADATA, DESCRIBE_CONFIGS, INCREMENTAL_ALTER_CONFIGS = 18, 3, 32, 44
ALTER_USER_SCRAM_CREDENTIALS = 51
SCRAM_MECHANISMS = {1: "SCRAM-SHA-256", 2: "SCRAM-SHA-512"}
UNSUPPORTED_SASL_MECHANISM, RESOURCE_NOT_FOUND = 33, 91
SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36
ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 34, 58
HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
# Listener (upper case) → the SASL mechanisms it enables; only SASL_* listeners are here.
SASL_BY_LISTENER = {}
UNSUPPORTED_VERSION, INVALID_CONFIG, INVALID_REQUEST = 35, 40, 42
RESOURCE_BROKER = 4
SET, DELETE = 0, 1
DYNAMIC_BROKER_CONFIG = 2
KEYSTORE_KEY = "ssl.keystore.location"


def advertised(props, listener):
    """(host, port) that `advertised.listeners` (else `listeners`) gives for `listener`."""
    for key in ("advertised.listeners", "listeners"):
        for entry in filter(None, (e.strip() for e in props.get(key, "").split(","))):
            name, _, hostport = entry.partition("://")
            if name == listener:
                host, _, port = hostport.rpartition(":")
                return host.strip("[]"), int(port)
    return None


def kafka_string(text):
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def nullable_string(text):
    return struct.pack(">h", -1) if text is None else kafka_string(text)


class Reader:
    """Reads a request body (classic, or flexible with the compact_ methods); a short one raises
    struct.error."""

    def varint(self):
        value, shift = 0, 0
        while True:
            byte = self.take(">B")
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def compact_bytes(self):
        size = self.varint() - 1
        if size < 0:
            return None
        if self.pos + size > len(self.data):
            raise struct.error("short bytes")
        data = self.data[self.pos:self.pos + size]
        self.pos += size
        return data

    def compact_string(self):
        data = self.compact_bytes()
        return None if data is None else data.decode()

    def tagged_fields(self):
        for _ in range(self.varint()):
            self.varint()
            self.compact_bytes()

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self):
        size = self.take(">h")
        if size < 0:
            return None
        if self.pos + size > len(self.data):
            raise struct.error("short string")
        text = self.data[self.pos:self.pos + size].decode()
        self.pos += size
        return text


def alter_configs(body, node_id, tls_by_listener, dynamic):
    """IncrementalAlterConfigs v0: set or delete dynamic configs, reloading key stores set."""
    reader = Reader(body)
    answers = []
    for _ in range(reader.take(">i")):
        resource_type, name = reader.take(">b"), reader.string()
        configs = []
        for _ in range(reader.take(">i")):
            configs.append((reader.string(), reader.take(">b"), reader.string()))
        error, message = 0, None
        if resource_type != RESOURCE_BROKER or name != str(node_id):
            error, message = INVALID_REQUEST, f"this is broker {node_id}"
        changed = {}
        for key, operation, value in configs if error == 0 else []:
            if operation not in (SET, DELETE):
                error, message = INVALID_CONFIG, f"the stand-in Kafka only sets and deletes, not operation {operation}"
                break
            prefix, _, rest = key.partition(".name.")
            listener, _, setting = rest.partition(".")
            holder = tls_by_listener.get(listener.upper())
            if operation == SET and prefix == "listener" and setting == KEYSTORE_KEY and holder is not None:
                try:
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    context.load_cert_chain(certfile=value, keyfile=value)
                except (OSError, ssl.SSLError) as failure:
                    error, message = INVALID_CONFIG, f"cannot load {value}: {failure}"
                    break
                holder[0] = context
            changed[key] = value if operation == SET else None
        if error == 0:
            dynamic.update(changed)
        answers.append(struct.pack(">h", error) + nullable_string(message)
                       + struct.pack(">b", resource_type) + kafka_string(name))
    save_dynamic(dynamic)
    return struct.pack(">ii", 0, len(answers)) + b"".join(answers)


def describe_configs(body, node_id, dynamic):
    """DescribeConfigs v1: this broker's dynamic configs; other resources are unknown here."""
    reader = Reader(body)
    results = []
    for _ in range(reader.take(">i")):
        resource_type, name = reader.take(">b"), reader.string()
        keys = reader.take(">i")
        for _ in range(max(keys, 0)):
            reader.string()
        configs = []
        if resource_type == RESOURCE_BROKER and name == str(node_id):
            error = 0
            for key, value in sorted(dynamic.items()):
                if value is None:
                    continue
                # name, value, read_only, source, is_sensitive, no synonyms
                configs.append(kafka_string(key) + nullable_string(value)
                               + struct.pack(">bbbi", 0, DYNAMIC_BROKER_CONFIG, 0, 0))
        else:
            error = INVALID_REQUEST
        results.append(struct.pack(">h", error) + nullable_string(None) + struct.pack(">b", resource_type)
                       + kafka_string(name) + struct.pack(">i", len(configs)) + b"".join(configs))
    return struct.pack(">ii", 0, len(results)) + b"".join(results)


DYNAMIC_PATH = None


def compact_string(text):
    if text is None:
        return b"\x00"
    data = text.encode()
    return varint(len(data) + 1) + data


def varint(value):
    out = b""
    while value >= 0x80:
        out += bytes([(value & 0x7F) | 0x80])
        value >>= 7
    return out + bytes([value])


def alter_scram(body):
    """AlterUserScramCredentials v0 (flexible): keep salted credentials; the response body."""
    reader = Reader(body)
    path = os.path.join(os.path.dirname(DYNAMIC_PATH), "scram-users.json") if DYNAMIC_PATH else None
    users = {}
    if path and os.path.exists(path):
        with open(path) as handle:
            users = json.load(handle)
    results = []
    for _ in range(reader.varint() - 1):
        name, mechanism = reader.compact_string(), reader.take(">b")
        reader.tagged_fields()
        error, message = 0, None
        if SCRAM_MECHANISMS.get(mechanism) not in users.get(name, {}):
            error, message = RESOURCE_NOT_FOUND, "no such credential"
        else:
            del users[name][SCRAM_MECHANISMS[mechanism]]
            if not users[name]:
                del users[name]
        results.append((name, error, message))
    for _ in range(reader.varint() - 1):
        name, mechanism, iterations = reader.compact_string(), reader.take(">b"), reader.take(">i")
        salt, salted = reader.compact_bytes(), reader.compact_bytes()
        reader.tagged_fields()
        error, message = 0, None
        if mechanism not in SCRAM_MECHANISMS:
            error, message = UNSUPPORTED_SASL_MECHANISM, f"mechanism {mechanism}"
        else:
            users.setdefault(name, {})[SCRAM_MECHANISMS[mechanism]] = {
                "iterations": iterations, "salt": salt.hex(), "salted_password": salted.hex()}
        results.append((name, error, message))
    if path:
        with open(path + ".tmp", "w") as handle:
            json.dump(users, handle)
        os.replace(path + ".tmp", path)
    encoded = b"".join(compact_string(name) + struct.pack(">h", error) + compact_string(message) + b"\x00"
                       for name, error, message in results)
    return struct.pack(">i", 0) + varint(len(results) + 1) + encoded + b"\x00"


def load_dynamic():
    if DYNAMIC_PATH is None or not os.path.exists(DYNAMIC_PATH):
        return {}
    with open(DYNAMIC_PATH) as handle:
        return json.load(handle)


def save_dynamic(dynamic):
    if DYNAMIC_PATH is None:
        return
    with open(DYNAMIC_PATH + ".tmp", "w") as handle:
        json.dump({k: v for k, v in dynamic.items() if v is not None}, handle)
    os.replace(DYNAMIC_PATH + ".tmp", DYNAMIC_PATH)


def answer(api_key, api_version, body, node_id, endpoint, tls_by_listener, dynamic):
    """The response body, or None for a request this stand-in does not serve (it then hangs up)."""
    if api_key == API_VERSIONS:
        error = 0 if api_version == 0 else UNSUPPORTED_VERSION
        apis = [(API_VERSIONS, 0, 0), (METADATA, 1, 1), (DESCRIBE_CONFIGS, 1, 1),
                (ALTER_USER_SCRAM_CREDENTIALS, 0, 0), (SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 1)]
        if not os.environ.get("FAKE_KAFKA_NO_RELOAD"):
            apis.append((INCREMENTAL_ALTER_CONFIGS, 0, 0))
        return struct.pack(">hi", error, len(apis)) + b"".join(struct.pack(">hhh", *a) for a in apis)
    if api_key == METADATA and api_version == 1 and endpoint:
        host, port = endpoint
        broker = struct.pack(">i", node_id) + kafka_string(host) + struct.pack(">ih", port, -1)
        return struct.pack(">i", 1) + broker + struct.pack(">ii", -1, 0)
    if api_key == INCREMENTAL_ALTER_CONFIGS and api_version == 0 and not os.environ.get("FAKE_KAFKA_NO_RELOAD"):
        return alter_configs(body, node_id, tls_by_listener, dynamic)
    if api_key == DESCRIBE_CONFIGS and api_version == 1:
        return describe_configs(body, node_id, dynamic)
    if api_key == ALTER_USER_SCRAM_CREDENTIALS and api_version == 0:
        return alter_scram(body)
    return None


def read_exactly(conn, size):
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def scram_users():
    path = os.path.join(os.path.dirname(DYNAMIC_PATH), "scram-users.json") if DYNAMIC_PATH else None
    if path and os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    return {}


def sasl_step(session, auth_bytes):
    """One SCRAM step of a SASL session: (error code, message, bytes for the client)."""
    mechanism = session.get("mechanism")
    if mechanism is None:
        return ILLEGAL_SASL_STATE, "SaslHandshake first", b""
    text = auth_bytes.decode(errors="replace")
    digest = HASHES[mechanism]
    if "server_first" not in session:
        bare = text[3:] if text.startswith("n,,") else None
        fields = dict(part.split("=", 1) for part in (bare or "").split(",") if "=" in part)
        user = fields.get("n", "").replace("=2C", ",").replace("=3D", "=")
        credential = scram_users().get(user, {}).get(mechanism)
        if bare is None or "r" not in fields or credential is None:
            return SASL_AUTHENTICATION_FAILED, f"Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}", b""
        nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        salt = bytes.fromhex(credential["salt"])
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={credential['iterations']}"
        session.update(bare=bare, server_first=server_first, nonce=nonce,
                       salted=bytes.fromhex(credential["salted_password"]))
        return 0, None, server_first.encode()
    without_proof, _, proof = text.rpartition(",p=")
    auth_message = f"{session['bare']},{session['server_first']},{without_proof}"
    salted = session["salted"]
    stored_key = digest(hmac.new(salted, b"Client Key", digest).digest()).digest()
    signature = hmac.new(stored_key, auth_message.encode(), digest).digest()
    try:
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
    except ValueError:
        client_key = b""
    if without_proof != f"c=biws,r={session['nonce']}" or digest(client_key).digest() != stored_key:
        return SASL_AUTHENTICATION_FAILED, f"Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}", b""
    server_key = hmac.new(salted, b"Server Key", digest).digest()
    session["authenticated"] = True
    server_signature = hmac.new(server_key, auth_message.encode(), digest).digest()
    return 0, None, b"v=" + base64.b64encode(server_signature)


def sasl_answer(api_key, api_version, body, session, mechanisms):
    """SaslHandshake and SaslAuthenticate (v0..1) on a SASL listener; None for anything else."""
    reader = Reader(body)
    if api_key == SASL_HANDSHAKE and api_version <= 1:
        wanted = reader.string()
        error = 0 if wanted in mechanisms and wanted in HASHES else UNSUPPORTED_SASL_MECHANISM
        if error == 0:
            session["mechanism"] = wanted
        return struct.pack(">hi", error, len(mechanisms)) + b"".join(kafka_string(m) for m in mechanisms)
    if api_key == SASL_AUTHENTICATE and api_version <= 1:
        size = reader.take(">i")
        error, message, reply = sasl_step(session, reader.data[reader.pos:reader.pos + size])
        out = struct.pack(">h", error) + nullable_string(message) + struct.pack(">i", len(reply)) + reply
        if api_version >= 1:
            out += struct.pack(">q", 0)
        return out
    return None


def converse(conn, node_id, endpoint, tls_by_listener, dynamic, listener=None):
    mechanisms = SASL_BY_LISTENER.get(listener)
    session = {"authenticated": mechanisms is None}
    with conn:
        conn.settimeout(10)
        try:
            while True:
                (size,) = struct.unpack(">i", read_exactly(conn, 4))
                request = Reader(read_exactly(conn, size))
                api_key, api_version, correlation = request.take(">hhi")
                request.string()  # client id (request header v1, v2)
                flexible = api_key == ALTER_USER_SCRAM_CREDENTIALS
                if flexible:
                    request.tagged_fields()  # request header v2
                body = None
                if mechanisms is not None and api_key in (SASL_HANDSHAKE, SASL_AUTHENTICATE):
                    body = sasl_answer(api_key, api_version, request.data[request.pos:], session, mechanisms)
                    if body is not None and not session["authenticated"] and api_key == SASL_AUTHENTICATE \
                            and struct.unpack(">h", body[:2])[0] != 0:
                        frame = struct.pack(">i", correlation) + body
                        conn.sendall(struct.pack(">i", len(frame)) + frame)
                        return  # Kafka closes the connection after a failed login
                elif not session["authenticated"] and api_key != API_VERSIONS:
                    return  # Kafka allows nothing but ApiVersions before the login
                else:
                    with LOCK:
                        body = answer(api_key, api_version, request.data[request.pos:], node_id, endpoint,
                                      tls_by_listener, dynamic)
                if body is None:
                    return
                frame = struct.pack(">i", correlation) + (b"\x00" if flexible else b"") + body
                conn.sendall(struct.pack(">i", len(frame)) + frame)
        except (ConnectionError, OSError, struct.error):
            return


def accept_forever(sock, node_id, endpoint, listener, tls_by_listener, dynamic):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_one, args=(conn, node_id, endpoint, listener, tls_by_listener, dynamic),
                         daemon=True).start()


def serve_one(conn, node_id, endpoint, listener, tls_by_listener, dynamic):
    holder = tls_by_listener.get(listener)
    if holder is not None:
        try:
            conn.settimeout(10)
            conn = holder[0].wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
    converse(conn, node_id, endpoint, tls_by_listener, dynamic, listener)


def tls_context(props, listener):
    """A server TLS context from the listener's PEM key store, or None for a plaintext listener."""
    keystore = props.get(f"listener.name.{listener.lower()}.ssl.keystore.location")
    if not keystore:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile=keystore, keyfile=keystore)
    return context


def serve(properties, state_dir):
    global DYNAMIC_PATH
    DYNAMIC_PATH = os.path.join(state_dir, "dynamic.json")
    dynamic = load_dynamic()
    props = read_properties(properties)
    for entry in filter(None, (e.strip() for e in props.get("listener.security.protocol.map", "").split(","))):
        name, _, protocol = entry.partition(":")
        if protocol.upper().startswith("SASL_"):
            enabled = props.get(f"listener.name.{name.lower()}.sasl.enabled.mechanisms", "")
            SASL_BY_LISTENER[name.upper()] = [m.strip() for m in enabled.split(",") if m.strip()]
    node_id = int(props.get("node.id", props.get("broker.id", "-1")))
    skip = set(filter(None, os.environ.get("FAKE_KAFKA_SKIP", "").split(",")))
    eip = os.environ.get("FAKE_KAFKA_EIP")
    binds = []
    for name, host, port in listener_addresses(props):
        if name in skip:
            continue
        binds.append((name, host, port))
        if eip and name == "EXTERNAL":
            binds.append((name, eip, port))
    sockets = []
    # The TLS context of each TLS listener, in a one-element list a reload replaces.
    tls_by_listener = {}
    for name, host, port in binds:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        # As Kafka's own acceptor does: a restart may bind again while connections of the last
        # instance (or a client's, whose source address is this loopback address) are in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            print(f"fake-kafka: cannot bind {host}:{port}: {error}", file=sys.stderr, flush=True)
            sys.exit(1)
        sock.listen(64)
        try:
            tls = tls_context(props, name)
        except (OSError, ssl.SSLError) as error:
            print(f"fake-kafka: listener {name}: cannot load its key store: {error}", file=sys.stderr, flush=True)
            sys.exit(1)
        if tls is not None:
            tls_by_listener.setdefault(name.upper(), [tls])
        sockets.append((sock, advertised(props, name), name.upper()))
    for sock, endpoint, listener in sockets:
        threading.Thread(target=accept_forever, args=(sock, node_id, endpoint, listener, tls_by_listener, dynamic),
                         daemon=True).start()
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


def restart(properties, state_dir):
    start = time.time_ns()
    stop(state_dir)
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "serve", os.path.abspath(properties),
         os.path.abspath(state_dir)],
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
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "restart":
        restart(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "stop":
        stop(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
