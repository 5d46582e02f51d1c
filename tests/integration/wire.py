"""Hand-made gateway traffic for tests: envelopes signed exactly as a gateway signs them (so a
test can vary one field at a time), and MQTT clients with any certificate."""
import hashlib
import os
import ssl
import threading
import time

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DOMAIN = b"suido/v1/batch\0"


def totp(secret_b32, at=None, step=30):
    """RFC 6238 TOTP (HMAC-SHA1, 6 digits) of a base32 secret, at time `at` (default now)."""
    import base64
    import hmac
    import struct
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    counter = int((time.time() if at is None else at) // step)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1000000
    return f"{code:06d}"


def signing_key(suite, gw):
    path = suite.dir / "gateways" / gw / "sign.key"
    return serialization.load_pem_private_key(path.read_bytes(), None)


def key_id(key):
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def envelope(pb, suite, gw, seq, readings, epoch=1000, ts_ms=None, signer=None,
             kind=None, tamper=False):
    """A SignedEnvelope of a telemetry batch; readings is [(channel, value), ...]."""
    key = signing_key(suite, signer or gw)
    h = pb.Header(version=1, gateway_id=gw, boot_epoch=epoch, seq=seq,
                  timestamp_ms=int(time.time() * 1000) if ts_ms is None else ts_ms,
                  key_id=key_id(key), kind=kind or pb.KIND_DATA, cipher=pb.CIPHER_NONE,
                  reading_count=len(readings))
    hb = h.SerializeToString()
    body = pb.TelemetryBatch(readings=[pb.Reading(channel=c, value=v, offset_ms=0)
                                       for c, v in readings]).SerializeToString()
    sig = key.sign(DOMAIN + len(hb).to_bytes(4, "big") + hb + body, ec.ECDSA(hashes.SHA256()))
    if tamper:
        body = body[:-1] + bytes([body[-1] ^ 1])
    return pb.SignedEnvelope(header=hb, body=body, signature=sig).SerializeToString()


CMD_DOMAIN = b"suido-cmd-v2\0"
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def command_payload(suite, pb, command, key=None, session_key=None, plaintext=False):
    """A SignedCommand as the gate sends it (services/gate/gate_seal.c): the serialized Command
    sealed with AES-256-GCM under a session key (fresh unless given) RSA-OAEP wrapped to the
    gateway's command key, the CommandHeader as AAD, signed by the gate's command key (or `key`).
    plaintext: the old form, the Command in clear signed over "suido-cmd-v1", no header."""
    key = key or serialization.load_pem_private_key(
        (suite.dir / "platform" / "command.key").read_bytes(), None)
    cmd = command.SerializeToString()
    if plaintext:
        sig = key.sign(b"suido-cmd-v1\0" + cmd, ec.ECDSA(hashes.SHA256()))
        return pb.SignedCommand(command=cmd, signature=sig).SerializeToString()
    to = serialization.load_pem_public_key(
        (suite.dir / "gateways" / command.gateway_id / "cmdwrap.pub").read_bytes())
    session_key = session_key or os.urandom(32)
    iv = os.urandom(12)
    h = pb.CommandHeader(version=1, gateway_id=command.gateway_id, command_id=command.command_id,
                         cipher=pb.CIPHER_AES_256_GCM, iv=iv,
                         wrapped_key=to.encrypt(session_key, OAEP),
                         key_id=hashlib.sha256(session_key).hexdigest()[:16])
    hb = h.SerializeToString()
    ct = AESGCM(session_key).encrypt(iv, cmd, hb)
    sig = key.sign(CMD_DOMAIN + len(hb).to_bytes(4, "big") + hb + ct, ec.ECDSA(hashes.SHA256()))
    return pb.SignedCommand(header=hb, command=ct, signature=sig).SerializeToString()


def open_command(suite, pb, payload):
    """(CommandHeader, Command) of a sealed command, opened with its gateway's command key as the
    gateway opens it."""
    sc = pb.SignedCommand()
    sc.ParseFromString(payload)
    h = pb.CommandHeader()
    h.ParseFromString(sc.header)
    priv = serialization.load_pem_private_key(
        (suite.dir / "gateways" / h.gateway_id / "cmdwrap.key").read_bytes(), None)
    c = pb.Command()
    c.ParseFromString(AESGCM(priv.decrypt(h.wrapped_key, OAEP)).decrypt(h.iv, sc.command,
                                                                         sc.header))
    return h, c


class Client:
    """A paho MQTT client over TLS with the given identity; records what it receives."""

    def __init__(self, suite, cert=None, key=None, client_id="x", ca=None, host="localhost"):
        self.connected = threading.Event()
        self.refused = threading.Event()
        self.messages = []
        self.suback = []
        self.c = mqtt.Client(client_id=client_id, clean_session=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca or str(suite.dir / "ca" / "ca.crt"))
        if cert:
            ctx.load_cert_chain(cert, key)
        self.c.tls_set_context(ctx)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: self.refused.set()
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, qos: self.suback.extend(qos)
        self.host, self.port = host, suite.port
        self.error = None

    def _on_connect(self, c, u, flags, rc):
        (self.connected if rc == 0 else self.refused).set()

    def connect(self, timeout=5):
        """True when the broker accepted the session."""
        try:
            self.c.connect(self.host, self.port, keepalive=30)
        except (ssl.SSLError, OSError) as e:
            self.error = e
            return False
        self.c.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connected.is_set():
                return True
            if self.refused.is_set():
                return False
            time.sleep(0.02)
        return False

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=5)
        return info

    def subscribe(self, topic, qos=1):
        self.c.subscribe(topic, qos)

    def close(self):
        # a refused session may leave a broken TLS socket behind: closing it is not a failure
        try:
            self.c.disconnect()
        except (ssl.SSLError, OSError):
            pass
        finally:
            self.c.loop_stop()
