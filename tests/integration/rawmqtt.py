"""Hand-built MQTT packets over TLS (or plain TCP), for the inputs paho refuses to produce:
malformed topics, absurd remaining lengths, a second CONNECT, MQTT 5 properties by the thousand,
retained publishes and wills that a library would clear by itself.

Only what the tests need: MQTT 3.1.1 and 5 CONNECT, PUBLISH, SUBSCRIBE, and a reader that tells a
packet from a closed connection."""
import socket
import ssl
import struct
import time

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, DISCONNECT = 1, 2, 3, 4, 8, 9, 14

# MQTT 5 property identifiers used here
PROP_USER = 0x26
PROP_WILL_DELAY = 0x18


def varint(n):
    """MQTT variable byte integer (remaining length, property length)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(n)
    out = b""
    while True:
        b, n = n % 128, n // 128
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def s16(b):
    """A length-prefixed (u16) byte string; str is UTF-8 encoded."""
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">H", len(b)) + b


def packet(ptype, flags, body):
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


def user_props(pairs):
    """MQTT 5 user properties: [(name, value), ...] -> property bytes (without the length)."""
    return b"".join(bytes([PROP_USER]) + s16(k) + s16(v) for k, v in pairs)


def props(raw=b""):
    return varint(len(raw)) + raw


def connect(client_id, version=4, keepalive=30, clean=True, will=None, will_qos=1,
            will_retain=False, connect_props=b"", will_props=b"", username=None, password=None):
    """CONNECT; will = (topic, payload). version 4 = MQTT 3.1.1, 5 = MQTT 5."""
    flags = 0x02 if clean else 0
    payload = s16(client_id)
    if will:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        if version == 5:
            payload += props(will_props)
        payload += s16(will[0]) + s16(will[1])
    if username is not None:
        flags |= 0x80
        payload += s16(username)
    if password is not None:
        flags |= 0x40
        payload += s16(password)
    var = s16(b"MQTT") + bytes([version, flags]) + struct.pack(">H", keepalive)
    if version == 5:
        var += props(connect_props)
    return packet(CONNECT, 0, var + payload)


def publish(topic, payload, qos=1, pid=1, retain=False, version=4, publish_props=b"", dup=False):
    """PUBLISH; topic is str or raw bytes (so that it can be malformed on purpose)."""
    flags = (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    var = s16(topic)
    if qos:
        var += struct.pack(">H", pid)
    if version == 5:
        var += props(publish_props)
    return packet(PUBLISH, flags, var + payload)


def subscribe(topic, qos=1, pid=1, version=4):
    var = struct.pack(">H", pid)
    if version == 5:
        var += props()
    return packet(SUBSCRIBE, 0x02, var + s16(topic) + bytes([qos]))


def tls_context(suite, who=None, ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca or str(suite.dir / "ca" / "ca.crt"))
    if who:
        ctx.load_cert_chain(*suite.tls_files(who))
    return ctx


class Conn:
    """One connection to the broker: TLS with `who`'s certificate (or plain TCP with tls=False)."""

    def __init__(self, suite, who=None, tls=True, port=None, timeout=5, ctx=None):
        raw = socket.create_connection(("localhost", port or suite.port), timeout=timeout)
        if tls:
            ctx = ctx or tls_context(suite, who)
            self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        else:
            self.sock = raw
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def try_send(self, data):
        """Sends; False when the broker has already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            return False

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError from None
            if not chunk:
                raise EOFError
            self.buf += chunk

    def read(self, timeout=5):
        """The next packet as (type, flags, body); None if the broker closed the connection;
        raises TimeoutError when nothing came."""
        deadline = time.monotonic() + timeout
        try:
            self._fill(2, deadline)
            n, mult, i = 0, 1, 1
            while True:
                self._fill(i + 1, deadline)
                b = self.buf[i]
                n += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            self._fill(i + n, deadline)
        except (EOFError, ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return None
        head, body = self.buf[0], self.buf[i:i + n]
        self.buf = self.buf[i + n:]
        return head >> 4, head & 0x0F, body

    def closed_within(self, timeout):
        """True when the broker closes the connection within timeout (packets before the close,
        such as a DISCONNECT with a reason code, are collected in self.seen)."""
        self.seen = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                p = self.read(left)
            except TimeoutError:
                return False
            if p is None:
                return True
            self.seen.append(p)

    def mqtt_connect(self, client_id, **kw):
        """Sends CONNECT and returns the CONNACK's reason code (None if closed instead)."""
        self.send(connect(client_id, **kw))
        p = self.read()
        if p is None or p[0] != CONNACK:
            return None
        return p[2][1]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def open_session(suite, who, version=4, **kw):
    """A TLS connection of `who` with an accepted MQTT session."""
    c = Conn(suite, who)
    rc = c.mqtt_connect(who, version=version, **kw)
    assert rc == 0, f"{who}: CONNACK {rc}"
    return c
