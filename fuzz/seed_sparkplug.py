#!/usr/bin/python3
"""Writes the seed corpus of the sparkplug fuzz target (fuzz/corpus/sparkplug/): valid Sparkplug B
payloads of each message kind, each behind the selector byte that picks its topic and setup
(fuzz/sparkplug.c), encoded with Python's protobuf from proto/sparkplug_b.proto, so that the
seeds do not come from the C code they exercise. Run once by hand after a change of the schema,
of the target's map or of its selector byte (fuzz/README.md):

    /usr/bin/python3 fuzz/seed_sparkplug.py fuzz/corpus/sparkplug
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)

# fuzz/sparkplug.c: bits 0-2 the message kind, then flags
NBIRTH, NDATA, NDEATH, DBIRTH, DDATA, DDEATH, CMD, RAW = range(8)
TANK2, NO_DBIRTH, NO_NBIRTH, COMMANDS, TWICE = 0x08, 0x10, 0x20, 0x40, 0x80
NOW = 1800000000000  # the target's clock

# Sparkplug datatypes
INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64 = range(1, 9)
FLOAT, DOUBLE, BOOLEAN, STRING = 9, 10, 11, 12
DATASET, TEMPLATE = 16, 19


def main(out):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["protoc", "--proto_path=" + os.path.join(TOP, "proto"),
                        "--python_out=" + tmp, "sparkplug_b.proto"], check=True)
        sys.path.insert(0, tmp)
        import sparkplug_b_pb2 as pb

        def payload(seq=None, ts=NOW + 5):
            p = pb.Payload(timestamp=ts)
            if seq is not None:
                p.seq = seq
            return p

        def metric(p, name=None, alias=None, dt=None, unit=None, ts=None, null=False, **value):
            m = p.metrics.add()
            if name is not None:
                m.name = name
            if alias is not None:
                m.alias = alias
            if dt is not None:
                m.datatype = dt
            if ts is not None:
                m.timestamp = ts
            if null:
                m.is_null = True
            for k, v in value.items():
                setattr(m, k, v)
            if unit is not None:
                m.properties.keys.append("engUnit")
                m.properties.values.add(type=STRING, string_value=unit)
            return m

        seeds = {}

        # the node's birth, as the target's setup sends it (bdSeq 5), and with another bdSeq
        def nbirth(bdseq):
            p = payload(seq=0)
            metric(p, "bdSeq", dt=INT64, long_value=bdseq)
            metric(p, "Node Control/Rebirth", 6, BOOLEAN, boolean_value=False)
            metric(p, "Flow", 1, FLOAT, "L/s", float_value=1.25)
            metric(p, "Running", 2, BOOLEAN, boolean_value=True)
            metric(p, "I8", 3, INT8, int_value=0xFF)
            metric(p, "Speed", 4, INT32, int_value=0xFFFFFFFB)
            metric(p, "Nothing", 5, FLOAT, "x", null=True)
            return p
        seeds["nbirth"] = (NBIRTH, nbirth(6))
        seeds["nbirth-offline"] = (NBIRTH | NO_NBIRTH, nbirth(1))
        seeds["nbirth-twice"] = (NBIRTH | TWICE, nbirth(7))
        p = nbirth(8)  # types the host takes as they come, unmapped
        m = metric(p, "Table", 30, DATASET)
        m.dataset_value.num_of_columns = 2
        m.dataset_value.columns.extend(["a", "b"])
        m.dataset_value.types.extend([INT32, STRING])
        row = m.dataset_value.rows.add()
        row.elements.add(int_value=1)
        row.elements.add(string_value="x")
        m = metric(p, "Motor", 31, TEMPLATE)
        m.template_value.template_ref = "MotorType"
        m.template_value.metrics.add(name="rpm", datatype=INT32, int_value=3)
        m.template_value.parameters.add(name="p", type=INT32, int_value=1)
        metric(p, "Label", 32, STRING, string_value="pump one")
        metric(p, "Blob", 33, 17, bytes_value=b"\x00\x01")
        seeds["nbirth-other-types"] = (NBIRTH, p)
        p = payload(seq=0)  # the mapped metrics in the other numeric datatypes
        metric(p, "bdSeq", dt=INT64, long_value=9)
        metric(p, "Flow", 1, UINT32, "L/s", int_value=4000000000)
        metric(p, "Running", 2, UINT8, "1", int_value=0x1FF)
        metric(p, "I8", 3, INT16, int_value=0xFFFF8000)
        metric(p, "Speed", 4, UINT16, int_value=65535)
        metric(p, "Nothing", 5, INT64, "x", long_value=(1 << 64) - 2)
        metric(p, "Extra", 7, UINT64, long_value=(1 << 64) - 1)
        seeds["nbirth-numeric-types"] = (NBIRTH, p)

        # the node's data after the setup's NBIRTH (seq 0) and DBIRTH (seq 1)
        p = payload(seq=2)
        metric(p, alias=1, ts=NOW + 4, float_value=3.5)
        metric(p, alias=2, boolean_value=False)
        metric(p, alias=3, int_value=0xFFFFFFFF)
        metric(p, alias=5, null=True)
        seeds["ndata"] = (NDATA, p)
        seeds["ndata-twice"] = (NDATA | TWICE, p)
        seeds["ndata-offline"] = (NDATA | NO_NBIRTH, p)
        p = payload(seq=2)
        metric(p, alias=4, datatype=INT32, int_value=42)
        seeds["ndata-command"] = (NDATA | COMMANDS, p)
        p = payload(seq=2)
        metric(p, "Flow", float_value=1.0)
        metric(p, alias=99, float_value=1.0)
        seeds["ndata-unreadable"] = (NDATA, p)

        p = payload()
        metric(p, "bdSeq", dt=INT64, long_value=5)
        seeds["ndeath"] = (NDEATH, p)
        p = payload()
        metric(p, "bdSeq", dt=INT64, long_value=4)
        seeds["ndeath-stale"] = (NDEATH, p)

        # devices
        p = payload(seq=2)
        metric(p, "Level", 10, DOUBLE, double_value=2.5)
        metric(p, "Temp", 11, FLOAT, "degC", float_value=9.0)
        metric(p, "Valve", 12, BOOLEAN, boolean_value=False)
        seeds["dbirth"] = (DBIRTH, p)
        seeds["dbirth-first"] = (DBIRTH | NO_DBIRTH, p)
        p = payload(seq=2)
        metric(p, "Level", 20, DOUBLE, ts=NOW - 1000, double_value=0.5)
        metric(p, "Mode", 21, INT16, int_value=0xFFFF)
        seeds["dbirth-tank2"] = (DBIRTH | TANK2, p)
        p = payload(seq=2)
        metric(p, alias=10, double_value=3.25)
        metric(p, alias=11, ts=NOW + 1, float_value=10.5)
        metric(p, alias=12, boolean_value=True)
        seeds["ddata"] = (DDATA, p)
        seeds["ddata-command"] = (DDATA | COMMANDS, p)
        seeds["ddata-before-birth"] = (DDATA | NO_DBIRTH, p)
        seeds["ddeath"] = (DDEATH, payload(seq=2))

        # commands (ignored) and topics of the input's own
        p = payload(ts=NOW)
        metric(p, "Node Control/Rebirth", dt=BOOLEAN, ts=NOW, boolean_value=True)
        seeds["ncmd-rebirth"] = (CMD, p)
        seeds["dcmd"] = (CMD | TANK2, p)
        raw = {
            "raw-ndata": ("spBv1.0/G/NDATA/gw-fuzz", seeds["ndata"][1]),
            "raw-other-node": ("spBv1.0/H/NBIRTH/gw-fuzz-2", None),
            "raw-wrong-group": ("spBv1.0/H/NDATA/gw-fuzz", seeds["ndata"][1]),
            "raw-trailing-slash": ("spBv1.0/G/NDATA/gw-fuzz/", seeds["ndata"][1]),
            "raw-state": ("spBv1.0/STATE/suido", None),
        }
        p = payload(seq=0)
        metric(p, "bdSeq", dt=INT64, long_value=0)
        metric(p, "X", 1, DOUBLE, "m", double_value=1.0)
        for name, (topic, msg) in raw.items():
            body = (msg or p).SerializeToString()
            if name == "raw-state":
                body = b'{"online":true,"timestamp":1800000000000}'
            seeds[name] = (RAW, topic.encode() + b"\x00" + body)

        os.makedirs(out, exist_ok=True)
        for name, (sel, msg) in seeds.items():
            body = msg if isinstance(msg, bytes) else msg.SerializeToString()
            with open(os.path.join(out, name), "wb") as f:
                f.write(bytes([sel]) + body)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus", "sparkplug"))
