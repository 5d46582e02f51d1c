"""An independent Sparkplug B edge node for integration tests.

Speaks Sparkplug B (Eclipse Sparkplug 3.0) over MQTT 3.1.1 with paho-mqtt 1.6, encoding payloads
with tests/sparkplug/sparkplug_b.proto (the tests' own copy of the schema, compiled here at import
with protoc), so that what the service decodes was produced by an implementation independent of
the service's. See README.md beside this file.

    from edge_node import EdgeNode, DataType
    node = EdgeNode("127.0.0.1", port, "Plant", "rtu-7", ca=..., cert=..., key=...)
    node.connect()
    node.nbirth([{"name": "Flow", "alias": 1, "datatype": DataType.Float, "value": 1.5,
                  "unit": "m3/h"}])
    node.ndata({"Flow": 1.75})
    node.disconnect()

Nothing in this module is a test; it is meant to be imported by tests.
"""
import atexit
import datetime
import importlib.util
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE / "sparkplug_b.proto"
NAMESPACE = "spBv1.0"


# ---------------------------------------------------------------- the schema, compiled at import

def _cache_dir():
    build = os.environ.get("SUIDO_BUILD")
    if build:
        d = pathlib.Path(build) / "sparkplug-py"
        d.mkdir(parents=True, exist_ok=True)
        return d
    d = pathlib.Path(tempfile.mkdtemp(prefix="sparkplug-py-"))
    atexit.register(shutil.rmtree, d, True)
    return d


def _compile_and_import():
    """protoc --python_out into a scratch folder inside the cache folder, then an atomic rename, so
    that processes importing this module at the same time never read a half-written file."""
    cache = _cache_dir()
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=".protoc-", dir=cache))
    try:
        r = subprocess.run(["protoc", f"--python_out={scratch}", f"-I{HERE}", str(PROTO)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit {r.returncode}): "
                               f"{r.stderr.strip()}")
        os.replace(scratch / "sparkplug_b_pb2.py", cache / "sparkplug_b_pb2.py")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    path = cache / "sparkplug_b_pb2.py"
    spec = importlib.util.spec_from_file_location("sparkplug_b_pb2", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except TypeError as e:
        # protobuf's default descriptor pool holds one "sparkplug_b.proto" per process.
        raise RuntimeError(
            f"cannot load {path}: another, different sparkplug_b.proto (package "
            f"org.eclipse.tahu.protobuf) is already loaded in this Python process; load the "
            f"service's Sparkplug schema in another process: {e}") from e
    return module


pb = _compile_and_import()
Payload = pb.Payload


# ---------------------------------------------------------------- data types

class DataType:
    """Sparkplug B data type codes (spec 6.4.16)."""
    Unknown = 0
    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
    UUID = 15
    DataSet = 16
    Bytes = 17
    File = 18
    Template = 19
    PropertySet = 20
    PropertySetList = 21
    Int8Array = 22
    Int16Array = 23
    Int32Array = 24
    Int64Array = 25
    UInt8Array = 26
    UInt16Array = 27
    UInt32Array = 28
    UInt64Array = 29
    FloatArray = 30
    DoubleArray = 31
    BooleanArray = 32
    StringArray = 33
    DateTimeArray = 34


DATATYPE_NAMES = {v: k for k, v in vars(DataType).items() if not k.startswith("_")}
# The same constants at module level: edge_node.Int16, edge_node.Float, ...
globals().update({name: code for code, name in DATATYPE_NAMES.items()})

for _code, _name in DATATYPE_NAMES.items():   # the schema and this table must agree
    assert pb.DataType.Value(_name) == _code, _name

# (bits, signed) of the integer types
_INT_BITS = {
    DataType.Int8: (8, True), DataType.Int16: (16, True), DataType.Int32: (32, True),
    DataType.Int64: (64, True), DataType.UInt8: (8, False), DataType.UInt16: (16, False),
    DataType.UInt32: (32, False), DataType.UInt64: (64, False), DataType.DateTime: (64, False),
}
_UINT32_FIELD = {DataType.Int8, DataType.Int16, DataType.Int32,
                 DataType.UInt8, DataType.UInt16, DataType.UInt32}
_UINT64_FIELD = {DataType.Int64, DataType.UInt64, DataType.DateTime}
_STRING_TYPES = {DataType.String, DataType.Text, DataType.UUID}
_ARRAY_FORMAT = {
    DataType.Int8Array: "b", DataType.Int16Array: "h", DataType.Int32Array: "i",
    DataType.Int64Array: "q", DataType.UInt8Array: "B", DataType.UInt16Array: "H",
    DataType.UInt32Array: "I", DataType.UInt64Array: "Q", DataType.FloatArray: "f",
    DataType.DoubleArray: "d", DataType.DateTimeArray: "Q",
}
# The value fields common to Metric, PropertyValue, DataSetValue and Template.Parameter.
_SCALAR_FIELDS = ("int_value", "long_value", "float_value", "double_value", "boolean_value",
                  "string_value")
_RAW_FIELDS = _SCALAR_FIELDS + ("bytes_value",)

OMIT = object()
"""Pass as a timestamp to leave the field out of the payload."""


def now_ms():
    return int(time.time() * 1000)


def _ms(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(value.timestamp() * 1000)
    return value


def to_wire_int(datatype, value, narrow=False):
    """The unsigned wire value of an integer of a Sparkplug integer type.

    Negative Int8/Int16/Int32 go into the uint32 field as 32-bit two's complement (sign-extended:
    Int16 -2 is 0xFFFFFFFE), negative Int64 into the uint64 field as 64-bit two's complement. With
    narrow=True the two's complement is taken at the type's own width instead (Int16 -2 is 0xFFFE),
    a form some implementations emit. Out-of-range values raise ValueError (put raw wire values in
    a metric dict's "int_value"/"long_value" to send those)."""
    bits, signed = _INT_BITS[datatype]
    value = _ms(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{DATATYPE_NAMES[datatype]} needs an int, not {value!r}")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= value <= hi:
        raise ValueError(f"{value} out of range for {DATATYPE_NAMES[datatype]} [{lo}, {hi}]")
    if value >= 0:
        return value
    width = bits if narrow else (32 if bits <= 32 else 64)
    return value & ((1 << width) - 1)


def from_wire_int(datatype, raw):
    """The integer a wire value stands for: signed types from two's complement at the type's
    width (so both the sign-extended and the narrow forms decode)."""
    bits, signed = _INT_BITS[datatype]
    if not signed:
        return raw
    raw &= (1 << bits) - 1
    return raw - (1 << bits) if raw >> (bits - 1) else raw


def pack_array(datatype, values):
    """bytes_value of an array type, per spec 6.4.17: little-endian packed elements;
    BooleanArray is a 4-byte LE count then the bits packed MSB first; StringArray is
    NUL-terminated UTF-8 strings."""
    values = list(values)
    if datatype == DataType.BooleanArray:
        out = bytearray(struct.pack("<I", len(values)))
        for i in range(0, len(values), 8):
            byte = 0
            for j, v in enumerate(values[i:i + 8]):
                if v:
                    byte |= 0x80 >> j
            out.append(byte)
        return bytes(out)
    if datatype == DataType.StringArray:
        return b"".join(s.encode() + b"\0" for s in values)
    fmt = _ARRAY_FORMAT[datatype]
    if datatype == DataType.DateTimeArray:
        values = [_ms(v) for v in values]
    return struct.pack(f"<{len(values)}{fmt}", *values)


def unpack_array(datatype, data):
    if datatype == DataType.BooleanArray:
        (n,) = struct.unpack_from("<I", data)
        bits = data[4:]
        return [bool(bits[i // 8] & (0x80 >> (i % 8))) for i in range(n)]
    if datatype == DataType.StringArray:
        parts = data.split(b"\0")
        return [p.decode() for p in parts[:-1]]
    fmt = _ARRAY_FORMAT[datatype]
    return list(struct.unpack(f"<{len(data) // struct.calcsize(fmt)}{fmt}", data))


def set_value(msg, datatype, value, narrow=False):
    """Puts a Python value into the value oneof of a Metric, PropertyValue, DataSetValue or
    Template.Parameter, in the field the spec assigns to the datatype. None sets is_null (where
    the message has it) and leaves the value out."""
    if value is None:
        if "is_null" in msg.DESCRIPTOR.fields_by_name:
            msg.is_null = True
        return
    if datatype in _UINT32_FIELD:
        msg.int_value = to_wire_int(datatype, value, narrow)
    elif datatype in _UINT64_FIELD:
        msg.long_value = to_wire_int(datatype, value, narrow)
    elif datatype == DataType.Float:
        msg.float_value = value
    elif datatype == DataType.Double:
        msg.double_value = value
    elif datatype == DataType.Boolean:
        if not isinstance(value, bool):
            raise TypeError(f"Boolean needs a bool, not {value!r}")
        msg.boolean_value = value
    elif datatype in _STRING_TYPES:
        msg.string_value = str(value)
    elif datatype in (DataType.Bytes, DataType.File):
        msg.bytes_value = bytes(value)
    elif datatype in _ARRAY_FORMAT or datatype in (DataType.BooleanArray, DataType.StringArray):
        msg.bytes_value = pack_array(datatype, value)
    elif datatype == DataType.DataSet:
        _fill_dataset(msg.dataset_value, value, narrow)
    elif datatype == DataType.Template:
        msg.template_value.CopyFrom(value)   # a Payload.Template built by the caller
    elif datatype == DataType.PropertySet:
        _fill_propertyset(msg.propertyset_value, value, narrow)
    elif datatype == DataType.PropertySetList:
        for ps in value:
            _fill_propertyset(msg.propertysets_value.propertyset.add(), ps, narrow)
    else:
        raise ValueError(f"no encoding for datatype {datatype} ({value!r})")


def get_value(msg, datatype=None):
    """The Python value of a Metric/PropertyValue/DataSetValue: integers of signed types back from
    two's complement, arrays unpacked, a DataSet as {"columns", "types", "rows"}. datatype: the
    type to read the value as when the message carries none (an aliased metric: its birth type)."""
    if "datatype" in msg.DESCRIPTOR.fields_by_name and msg.HasField("datatype"):
        datatype = msg.datatype
    elif "type" in msg.DESCRIPTOR.fields_by_name and msg.HasField("type"):
        datatype = msg.type
    if "is_null" in msg.DESCRIPTOR.fields_by_name and msg.is_null:
        return None
    which = msg.WhichOneof("value")
    if which is None:
        return None
    raw = getattr(msg, which)
    if which in ("int_value", "long_value") and datatype in _INT_BITS:
        return from_wire_int(datatype, raw)
    if which == "bytes_value" and (datatype in _ARRAY_FORMAT or datatype in (
            DataType.BooleanArray, DataType.StringArray)):
        return unpack_array(datatype, raw)
    if which == "dataset_value":
        return {"columns": list(raw.columns), "types": list(raw.types),
                "rows": [[get_value(v, t) for v, t in zip(r.elements, raw.types)]
                         for r in raw.rows]}
    if which == "propertyset_value":
        return propertyset_dict(raw)
    if which == "propertysets_value":
        return [propertyset_dict(ps) for ps in raw.propertyset]
    return raw


def propertyset_dict(ps):
    """{key: value} of a PropertySet."""
    return {k: get_value(v) for k, v in zip(ps.keys, ps.values)}


def _infer_property_type(value):
    if isinstance(value, bool):
        return DataType.Boolean
    if isinstance(value, int):
        if -(1 << 31) <= value < (1 << 31):
            return DataType.Int32
        return DataType.Int64 if value < 0 else DataType.UInt64
    if isinstance(value, float):
        return DataType.Double
    if isinstance(value, dict):
        return DataType.PropertySet
    if isinstance(value, (list, tuple)):
        return DataType.PropertySetList
    return DataType.String


def _fill_propertyset(ps, props, narrow=False):
    """props: {key: value}; a value is a (datatype, value) pair, or a bare value whose type is
    inferred (bool Boolean, int Int32 (Int64/UInt64 past 32 bits), float Double, str String,
    dict PropertySet, list of dicts PropertySetList, None a null String)."""
    for key, value in props.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int) \
                and not isinstance(value[0], bool):
            datatype, value = value
        else:
            datatype = _infer_property_type(value)
        ps.keys.append(key)
        pv = ps.values.add()
        pv.type = datatype
        set_value(pv, datatype, value, narrow)


def _fill_dataset(ds, value, narrow=False):
    """value: {"columns": [...], "types": [...], "rows": [[...], ...]}."""
    ds.num_of_columns = len(value["columns"])
    ds.columns.extend(value["columns"])
    ds.types.extend(value["types"])
    for row in value.get("rows", []):
        r = ds.rows.add()
        for v, t in zip(row, value["types"]):
            set_value(r.elements.add(), t, v, narrow)


def fill_metric(m, spec, timestamp=None, narrow=False):
    """Fills a Payload.Metric from a metric dict:

      name, alias, datatype     set when present
      value                     encoded for datatype ("encode_as" overrides the type used to
                                encode when "datatype" is left out of the message)
      unit                      property "engUnit" (String)
      properties                {key: value or (datatype, value)}, a PropertySet
      timestamp                 metric timestamp; defaults to the timestamp argument; None omits
      is_historical, is_transient, is_null
      metadata                  {field: value} of Payload.MetaData
      int_value ... bytes_value a raw wire value, set as is instead of encoding "value"
    """
    if spec.get("name") is not None:
        m.name = spec["name"]
    if spec.get("alias") is not None:
        m.alias = spec["alias"]
    ts = spec.get("timestamp", timestamp)
    if ts is not None and ts is not OMIT:
        m.timestamp = _ms(ts)
    if spec.get("datatype") is not None:
        m.datatype = spec["datatype"]
    for flag in ("is_historical", "is_transient", "is_null"):
        if spec.get(flag) is not None:
            setattr(m, flag, spec[flag])
    for k, v in (spec.get("metadata") or {}).items():
        setattr(m.metadata, k, v)
    props = {}
    if spec.get("unit") is not None:
        props["engUnit"] = (DataType.String, spec["unit"])
    props.update(spec.get("properties") or {})
    if props:
        _fill_propertyset(m.properties, props, narrow)
    raw = [f for f in _RAW_FIELDS if f in spec]
    if raw:
        for f in raw:
            setattr(m, f, spec[f])
    elif "value" in spec:
        datatype = spec.get("encode_as", spec.get("datatype"))
        if datatype is None:
            raise ValueError(f"metric {spec.get('name', spec.get('alias'))!r} has a value but "
                             f"no datatype to encode it with")
        set_value(m, datatype, spec["value"], narrow)
    return m


def build_payload(metrics=(), seq=None, timestamp=None, narrow=False):
    """A Payload message: timestamp (None: now; OMIT: none), seq (None: none), the metrics as
    metric dicts (see fill_metric), each with the payload timestamp unless it sets its own."""
    p = Payload()
    ts = now_ms() if timestamp is None else timestamp
    if ts is not OMIT:
        p.timestamp = _ms(ts)
    if seq is not None:
        p.seq = seq
    for spec in metrics:
        fill_metric(p.metrics.add(), spec, ts, narrow)
    return p


def decode(payload_bytes):
    """The Payload message of a Sparkplug B payload (google.protobuf DecodeError if malformed)."""
    return Payload.FromString(payload_bytes)


def metric_values(payload, datatypes=None, names=None):
    """{name: value} of a Payload's metrics. An aliased metric without a name is keyed by
    names[alias] if given, else by its alias (an int); datatypes: {alias or name: datatype} for
    metrics that carry no datatype."""
    datatypes, names = datatypes or {}, names or {}
    out = {}
    for m in payload.metrics:
        key = m.name if m.HasField("name") else names.get(m.alias, m.alias)
        dt = datatypes.get(m.alias if m.HasField("alias") else key, datatypes.get(key))
        out[key] = get_value(m, dt)
    return out


def topic(group, verb, node, device=None):
    return f"{NAMESPACE}/{group}/{verb}/{node}" + (f"/{device}" if device is not None else "")


class ConnectRefused(ConnectionError):
    """The broker answered CONNECT with a non-zero CONNACK return code (rc)."""

    def __init__(self, rc, where):
        self.rc = rc
        super().__init__(f"{where}: CONNACK refused the connection, return code {rc} "
                         f"({mqtt.connack_string(rc)})")


class SubscribeRefused(ConnectionError):
    pass


# ---------------------------------------------------------------- the edge node

class _Client(mqtt.Client):
    """paho's client whose network thread (loop_start) survives an exception: paho 1.6 lets an
    ssl.SSLError raised in recv (a TLS 1.3 server rejecting our certificate after the handshake)
    end the thread silently, with no on_disconnect, so waiters would only time out. Here the
    exception is passed to on_network_error(exc) and the socket closed."""

    on_network_error = None

    def _thread_main(self):
        try:
            super()._thread_main()
        except Exception as e:
            try:
                self._sock_close()
            except Exception:
                pass
            if self.on_network_error is not None:
                self.on_network_error(e)


class EdgeNode:
    """A Sparkplug B edge node (spBv1.0/<group>/.../<node>) over paho-mqtt 1.6, MQTT 3.1.1, clean
    session, no automatic reconnection.

    bdseq: the bdSeq of the first connect (reconnect() increments it, 0..255).
    auto_rebirth: answer NCMD "Node Control/Rebirth" = true with NBIRTH and the live DBIRTHs.
    bdseq_datatype: the datatype of the bdSeq metric (UInt64 by default; Sparkplug 3.0's
      normative statements say Int64, see README.md).
    datatype_in_data: put each metric's datatype in NDATA/DDATA (the 3.0 spec says SHOULD NOT but
      hosts must accept it; False leaves it out).
    narrow_ints: negative Int8/Int16 as two's complement at their own width (see to_wire_int).
    """

    def __init__(self, host, port, group, node, *, ca=None, cert=None, key=None, client_id=None,
                 bdseq=0, auto_rebirth=False, keepalive=30, bdseq_datatype=DataType.UInt64,
                 datatype_in_data=True, narrow_ints=False):
        self.host, self.port = host, port
        self.group, self.node = group, node
        self.ca, self.cert, self.key = ca, cert, key
        self.client_id = node if client_id is None else client_id
        self.bdseq = bdseq
        self.auto_rebirth = auto_rebirth
        self.keepalive = keepalive
        self.bdseq_datatype = bdseq_datatype
        self.datatype_in_data = datatype_in_data
        self.narrow_ints = narrow_ints

        self.seq = 0                    # seq of the next DBIRTH/NDATA/DDATA/DDEATH; settable
        self.commands = []              # (topic, {name: value}) of each NCMD/DCMD received
        self.command_payloads = []      # (topic, Payload) of the same
        self.bad_commands = []          # (topic, bytes, error) of NCMD/DCMD that did not decode
        self.rebirths = 0               # rebirths done in answer to NCMD Rebirth
        self.errors = []                # exceptions raised in background rebirths
        self.network_error = None       # what ended the network thread, if an exception did

        self._pub_lock = threading.RLock()      # seq assignment + enqueue, in wire order
        self._cond = threading.Condition()      # commands, rebirths, connection state
        self._client = None
        self._connected = False
        self._connack_rc = None
        self._connack = threading.Event()
        self._closed = threading.Event()
        self._subacks = {}
        self._births = {}       # None (node) or device -> [metric dict], values kept current
        self._born = {}         # None or device -> {name: (alias, datatype)}
        self._by_alias = {}     # alias -> (device or None, name, datatype)
        self._dead = set()      # devices after DDEATH (left out of rebirths)

    # ---------------------------------------------------------------- topics

    def topic(self, verb, device=None):
        return topic(self.group, verb, self.node, device)

    @property
    def connected(self):
        return self._connected

    # ---------------------------------------------------------------- connection

    def _where(self):
        return f"edge node {self.group}/{self.node} at {self.host}:{self.port}"

    def death_payload(self, bdseq=None, timestamp=None):
        """NDEATH payload: a timestamp and only the bdSeq metric, no seq."""
        return build_payload([{"name": "bdSeq", "datatype": self.bdseq_datatype,
                               "value": self.bdseq if bdseq is None else bdseq}],
                             timestamp=timestamp).SerializeToString()

    def connect(self, timeout=10):
        """CONNECT with the will NDEATH (QoS 1, not retained, bdSeq = self.bdseq), wait for the
        CONNACK, subscribe (QoS 1) to our NCMD and DCMD/+ and wait for the SUBACK."""
        if self._connected:
            raise RuntimeError(f"{self._where()}: already connected")
        c = _Client(client_id=self.client_id, clean_session=True, protocol=mqtt.MQTTv311,
                    reconnect_on_failure=False)
        if self.ca or self.cert or self.key:
            c.tls_set(ca_certs=self.ca, certfile=self.cert, keyfile=self.key)
        c.will_set(self.topic("NDEATH"), self.death_payload(), qos=1, retain=False)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_network_error = self._on_network_error
        self.network_error = None
        self._connack.clear()
        self._closed.clear()
        self._connack_rc = None
        self._subacks = {}
        self._client = c
        c.connect(self.host, self.port, keepalive=self.keepalive)   # OSError, ssl.SSLError
        c.loop_start()
        if not self._connack.wait(timeout):
            self._abandon()
            raise TimeoutError(f"{self._where()}: no CONNACK within {timeout} s")
        if self._connack_rc is None:
            self._abandon()
            why = f": {self.network_error!r}" if self.network_error else ""
            raise ConnectionError(f"{self._where()}: connection closed before CONNACK{why}") \
                from self.network_error
        if self._connack_rc != 0:
            self._abandon()
            raise ConnectRefused(self._connack_rc, self._where())
        subs = [(self.topic("NCMD"), 1), (self.topic("DCMD", "+"), 1)]
        rc, mid = c.subscribe(subs)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"{self._where()}: SUBSCRIBE failed: {mqtt.error_string(rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks or self._closed.is_set(),
                                       timeout):
                raise TimeoutError(f"{self._where()}: no SUBACK within {timeout} s")
            if mid not in self._subacks:
                raise ConnectionError(f"{self._where()}: connection lost before SUBACK")
            granted = self._subacks[mid]
        refused = [t for (t, _), q in zip(subs, granted) if q == 0x80]
        if refused:
            raise SubscribeRefused(f"{self._where()}: broker refused subscriptions {refused}")

    def _abandon(self):
        c = self._client
        c.loop_stop()
        sock = c.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self._connected = False

    def disconnect(self, timeout=10):
        """A clean MQTT DISCONNECT: the broker discards the will, no NDEATH is sent (call ndeath()
        first for the spec's SHOULD)."""
        if not self._connected:
            return
        self._client.disconnect()
        if not self._closed.wait(timeout):
            raise TimeoutError(f"{self._where()}: DISCONNECT not done within {timeout} s")
        self._client.loop_stop()

    def drop(self, timeout=10):
        """Close the connection without DISCONNECT (as a crash or a cut cable would), so that the
        broker publishes the will NDEATH."""
        if not self._connected:
            raise RuntimeError(f"{self._where()}: not connected")
        sock = self._client.socket()
        try:
            sock.shutdown(socket.SHUT_RDWR)     # TCP FIN, no DISCONNECT (nor TLS close_notify)
        except OSError:
            pass
        if not self._closed.wait(timeout):
            raise TimeoutError(f"{self._where()}: connection not closed within {timeout} s")
        self._client.loop_stop()

    def reconnect(self, timeout=10):
        """A new MQTT session: disconnect (cleanly) if connected, bdSeq + 1 (255 wraps to 0), then
        connect() with the new will. Send nbirth() (and dbirth()s) after it."""
        if self._connected:
            self.disconnect(timeout)
        self.bdseq = (self.bdseq + 1) % 256
        self.connect(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._connected:
            try:
                self.disconnect()
            except (TimeoutError, OSError):
                self._abandon()

    # paho callbacks (network thread)

    def _on_connect(self, client, userdata, flags, rc):
        self._connack_rc = rc
        self._connected = rc == 0
        self._connack.set()

    def _on_disconnect(self, client, userdata, rc):
        with self._cond:
            self._connected = False
            self._closed.set()
            self._connack.set()
            self._cond.notify_all()

    def _on_network_error(self, exc):
        self.network_error = exc
        self._on_disconnect(None, None, None)

    def _on_subscribe(self, client, userdata, mid, granted_qos):
        with self._cond:
            self._subacks[mid] = list(granted_qos)
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg):
        parts = msg.topic.split("/")
        device = parts[4] if len(parts) > 4 else None
        try:
            p = decode(msg.payload)
            values = {}
            for m in p.metrics:
                name, dt = self._resolve(m, device)
                values[name] = get_value(m, dt)
        except Exception as e:      # a malformed command must not kill the network thread
            with self._cond:
                self.bad_commands.append((msg.topic, bytes(msg.payload), e))
                self._cond.notify_all()
            return
        with self._cond:
            self.commands.append((msg.topic, values))
            self.command_payloads.append((msg.topic, p))
            self._cond.notify_all()
        if (self.auto_rebirth and parts[2] == "NCMD"
                and values.get("Node Control/Rebirth") is True):
            # Not in this thread: publishing waits on the network thread.
            threading.Thread(target=self._rebirth_in_background, daemon=True,
                             name=f"rebirth-{self.node}").start()

    def _resolve(self, m, device):
        """(name, datatype) of a received metric: by name, else by alias from our births."""
        if m.HasField("name"):
            name = m.name
            born = self._born.get(device, {}).get(name) or self._born.get(None, {}).get(name)
            return name, (born[1] if born else None)
        if m.HasField("alias") and m.alias in self._by_alias:
            _, name, dt = self._by_alias[m.alias]
            return name, dt
        return (m.alias if m.HasField("alias") else None), None

    def _rebirth_in_background(self):
        try:
            self.rebirth()
        except Exception as e:
            with self._cond:
                self.errors.append(e)
                self._cond.notify_all()
            return
        with self._cond:
            self.rebirths += 1
            self._cond.notify_all()

    # ---------------------------------------------------------------- publishing

    def next_seq(self):
        """Takes the node's next seq (0..255, wrapping), as NDATA/DBIRTH/DDATA/DDEATH do."""
        with self._pub_lock:
            s = self.seq
            self.seq = (s + 1) % 256
            return s

    def _enqueue(self, topic_, data, qos):
        if self._client is None or not self._connected:
            raise ConnectionError(f"{self._where()}: not connected (publishing on {topic_})")
        info = self._client.publish(topic_, data, qos=qos, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"{self._where()}: publish on {topic_} failed: "
                                  f"{mqtt.error_string(info.rc)}")
        return topic_, info

    def _wait(self, pending, timeout=10):
        for topic_, info in pending:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TimeoutError(f"{self._where()}: publish on {topic_} not done within "
                                   f"{timeout} s")

    def _seq_message(self, verb, device, metrics, timestamp):
        """Enqueue a message that takes the next seq; call with _pub_lock held."""
        data = self.payload(metrics, seq=self.next_seq(), timestamp=timestamp)
        return self._enqueue(self.topic(verb, device), data, 0)

    def payload(self, metrics, seq=None, timestamp=None):
        """Payload bytes from metric dicts (see fill_metric) exactly as given, nothing added:
        seq None leaves seq out, timestamp None is now (OMIT leaves it out)."""
        return build_payload(metrics, seq, timestamp, self.narrow_ints).SerializeToString()

    def publish_raw(self, topic_, payload_bytes, qos=0, timeout=10):
        """Publish any bytes on any topic (malformed input); takes no seq."""
        self._wait([self._enqueue(topic_, payload_bytes, qos)], timeout)

    def _register(self, device, specs):
        born = {}
        for s in specs:
            if s.get("name") is None or s.get("datatype") is None:
                raise ValueError(f"birth metric {s!r} needs a name and a datatype "
                                 f"(build malformed births with payload() and publish_raw())")
            born[s["name"]] = (s.get("alias"), s["datatype"])
        for alias, (dev, _, _) in list(self._by_alias.items()):
            if dev == device:
                del self._by_alias[alias]
        for name, (alias, dt) in born.items():
            if alias is not None:
                self._by_alias[alias] = (device, name, dt)
        self._born[device] = born
        self._births[device] = specs

    def nbirth(self, metrics, *, seq=0, timestamp=None, timeout=10):
        """NBIRTH with seq 0 (the node's seq restarts there), a timestamp, the metrics, and, unless
        the list has them already, bdSeq (self.bdseq) and Node Control/Rebirth (false)."""
        specs = [dict(m) for m in metrics]
        names = {s.get("name") for s in specs}
        extra = []
        if "bdSeq" not in names:
            extra.append({"name": "bdSeq", "datatype": self.bdseq_datatype, "value": self.bdseq})
        if "Node Control/Rebirth" not in names:
            extra.append({"name": "Node Control/Rebirth", "datatype": DataType.Boolean,
                          "value": False})
        for s in specs:     # given without a value: ours
            if s.get("name") == "bdSeq" and "value" not in s:
                s["value"] = self.bdseq
        specs = extra + specs
        with self._pub_lock:
            self._register(None, specs)
            self.seq = seq
            pending = [self._seq_message("NBIRTH", None, specs, timestamp)]
        self._wait(pending, timeout)

    def dbirth(self, device, metrics, *, timestamp=None, timeout=10):
        """DBIRTH of a device with the node's next seq."""
        specs = [dict(m) for m in metrics]
        with self._pub_lock:
            self._register(device, specs)
            self._dead.discard(device)
            pending = [self._seq_message("DBIRTH", device, specs, timestamp)]
        self._wait(pending, timeout)

    def rebirth(self, *, timestamp=None, timeout=10):
        """NBIRTH again (seq 0, the same bdSeq: same MQTT session) with the current values, then a
        DBIRTH for each device born and not dead since, with nothing between them."""
        with self._pub_lock:
            if None not in self._births:
                raise RuntimeError(f"{self._where()}: rebirth before any nbirth")
            for s in self._births[None]:
                if s.get("name") == "Node Control/Rebirth" and "value" in s:
                    s["value"] = False
            self.seq = 0
            pending = [self._seq_message("NBIRTH", None, self._births[None], timestamp)]
            for device, specs in self._births.items():
                if device is not None and device not in self._dead:
                    pending.append(self._seq_message("DBIRTH", device, specs, timestamp))
        self._wait(pending, timeout)

    def _data_metrics(self, device, values, by_alias):
        items = values.items() if hasattr(values, "items") else values
        born = self._born.get(device)
        if born is None:
            raise RuntimeError(f"{self._where()}: data for "
                               f"{'the node' if device is None else device!r} before its birth")
        current = {s["name"]: s for s in self._births[device]}
        specs = []
        for name, value in items:
            if name not in born:
                raise KeyError(f"metric {name!r} was not in the "
                               f"{'NBIRTH' if device is None else 'DBIRTH of ' + device} "
                               f"(send unknown metrics with payload() and publish_raw())")
            alias, dt = born[name]
            spec = {"value": value, "encode_as": dt}
            if self.datatype_in_data:
                spec["datatype"] = dt
            if by_alias:
                if alias is None:
                    raise ValueError(f"metric {name!r} was born without an alias")
                spec["alias"] = alias
            else:
                spec["name"] = name
            specs.append(spec)
            current[name]["value"] = value
        return specs

    def ndata(self, values, by_alias=True, timestamp=None, timeout=10):
        """NDATA: values {name: value} (or (name, value) pairs) of metrics of the NBIRTH, each by
        alias only (by_alias) or by name only, with its birth datatype and the next seq."""
        with self._pub_lock:
            specs = self._data_metrics(None, values, by_alias)
            pending = [self._seq_message("NDATA", None, specs, timestamp)]
        self._wait(pending, timeout)

    def ddata(self, device, values, by_alias=True, timestamp=None, timeout=10):
        """DDATA of a device, as ndata()."""
        with self._pub_lock:
            specs = self._data_metrics(device, values, by_alias)
            pending = [self._seq_message("DDATA", device, specs, timestamp)]
        self._wait(pending, timeout)

    def ddeath(self, device, timestamp=None, timeout=10):
        """DDEATH: a timestamp and the next seq, no metrics."""
        with self._pub_lock:
            self._dead.add(device)
            pending = [self._seq_message("DDEATH", device, [], timestamp)]
        self._wait(pending, timeout)

    def ndeath(self, bdseq=None, timeout=10):
        """Publish an NDEATH ourselves (QoS 1, waits for the PUBACK): a timestamp and the bdSeq
        metric, self.bdseq unless bdseq is given (a wrong one, say); no seq."""
        self._wait([self._enqueue(self.topic("NDEATH"), self.death_payload(bdseq), 1)], timeout)

    # ---------------------------------------------------------------- commands

    def wait_command(self, predicate=None, timeout=10, start=0):
        """The first (topic, {name: value}) of self.commands[start:] for which predicate(item) is
        true (any, without one), waiting for it up to timeout seconds; TimeoutError otherwise."""
        def find():
            for item in self.commands[start:]:
                if predicate is None or predicate(item):
                    return item
            return None
        with self._cond:
            found = self._cond.wait_for(find, timeout)
            if found is None:
                raise TimeoutError(
                    f"{self._where()}: no matching NCMD/DCMD within {timeout} s; received "
                    f"{self.commands[start:]!r}, undecodable {len(self.bad_commands)}")
            return found

    def wait_rebirths(self, count=1, timeout=10):
        """Wait until auto_rebirth has answered count Rebirth commands in all."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.rebirths >= count or self.errors, timeout):
                raise TimeoutError(f"{self._where()}: {self.rebirths} rebirths, not {count}, "
                                   f"within {timeout} s")
            if self.errors:
                raise RuntimeError(f"{self._where()}: rebirth failed: {self.errors[-1]!r}")

    @staticmethod
    def decode(payload_bytes):
        """The Payload message of a payload (e.g. an NCMD a host published)."""
        return decode(payload_bytes)
