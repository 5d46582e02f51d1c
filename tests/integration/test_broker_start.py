"""suido-broker-start with the real Mosquitto: a persistence file the broker saved is restored as it
is; the same file cut short, which Mosquitto alone refuses to start on, is set aside with an alarm
and the broker starts without it. A plain loopback listener is enough here: what is tested is the
broker's own persistence file, not its TLS."""
import os
import pwd
import socket
import subprocess
import time

import paho.mqtt.client as mqtt

from suite import BIN, TOP, reachable_by_broker, wait_until


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def write_conf(d, port):
    data = d / "data"
    data.mkdir(exist_ok=True)
    # as in broker/mkconf.sh: started as root, the broker switches to its own user, which owns
    # its persistence directory
    pw = pwd.getpwnam("mosquitto")
    os.chown(data, pw.pw_uid, pw.pw_gid)
    reachable_by_broker(d)
    conf = d / "mosquitto.conf"
    conf.write_text(f"""# test broker: persistence only
user mosquitto
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {data}/
persistence_file mosquitto.db
autosave_interval 3600
log_dest stderr
log_type all
""")
    return conf, data / "mosquitto.db"


def start(argv, log):
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def stop(p):
    p.terminate()
    assert p.wait(10) == 0  # a clean stop saves the persistence file


def queue_for_absent_subscriber(port, n):
    """A persistent session that subscribed and left, then n QoS 1 messages queued for it."""
    sub = mqtt.Client(client_id="absent", clean_session=False)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe("t/#", qos=1)
    time.sleep(0.3)
    sub.disconnect()
    sub.loop_stop()
    pub = mqtt.Client(client_id="pub")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for i in range(n):
        pub.publish("t/x", b"%d" % i + b"." * 200, qos=1).wait_for_publish()
    pub.disconnect()
    pub.loop_stop()


def collect_queued(port):
    """What the broker kept for the absent session, delivered when it comes back."""
    got = []
    sub = mqtt.Client(client_id="absent", clean_session=False)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    wait_until(lambda: len(got) >= 50, 5)
    time.sleep(0.3)
    sub.disconnect()
    sub.loop_stop()
    return got


def test_whole_file_restored_and_cut_file_set_aside(tmp_path):
    port = free_port()
    conf, db = write_conf(tmp_path, port)
    log1 = open(tmp_path / "first.log", "w")
    p = start([str(BIN / "suido-broker-start"), str(conf)], log1)
    assert wait_until(lambda: listening(port), 10), (tmp_path / "first.log").read_text()
    queue_for_absent_subscriber(port, 50)
    stop(p)
    whole = db.read_bytes()
    assert len(whole) > 50 * 200

    # the whole file: restored as it is (the session and its 50 queued messages), nothing set
    # aside; the copy taken first is what the broker saved (it saves again on this stop)
    log2 = open(tmp_path / "second.log", "w")
    p = start([str(BIN / "suido-broker-start"), str(conf)], log2)
    assert wait_until(lambda: listening(port), 10)
    assert len(collect_queued(port)) == 50
    stop(p)
    assert not list(db.parent.glob("mosquitto.db.damaged-*"))

    # cut short in the middle of a message, as a full disk leaves it: Mosquitto alone refuses
    db.write_bytes(whole[: len(whole) // 2])
    log3 = open(tmp_path / "plain.log", "w")
    plain = start(["mosquitto", "-c", str(conf)], log3)
    try:
        code = plain.wait(10)
    except subprocess.TimeoutExpired:
        plain.kill()
        raise AssertionError("mosquitto started on a cut persistence file: the check may be moot")
    assert code != 0, (tmp_path / "plain.log").read_text()

    # through suido-broker-start: set aside (kept byte for byte), alarm, the broker runs
    log4 = open(tmp_path / "fourth.log", "w")
    p = start([str(BIN / "suido-broker-start"), str(conf)], log4)
    try:
        assert wait_until(lambda: listening(port), 10), (tmp_path / "fourth.log").read_text()
        said = (tmp_path / "fourth.log").read_text()
        assert "event=broker_persistence_set_aside alarm=1" in said and "cut short" in said, said
        aside = list(db.parent.glob("mosquitto.db.damaged-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == whole[: len(whole) // 2]
        # the same process became the broker (signals reach it directly)
        assert open(f"/proc/{p.pid}/comm").read().strip() == "mosquitto"
        # it started empty: the session and its queue went with the file (the gateways' outboxes
        # are what covers this in suido)
        assert collect_queued(port) == []
    finally:
        stop(p)


def test_unreadable_persistence_refuses_to_start(tmp_path):
    port = free_port()
    conf, db = write_conf(tmp_path, port)
    db.mkdir()  # a directory where the file should be: not for this tool to fix
    r = subprocess.run([str(BIN / "suido-broker-start"), str(conf)], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 1 and "unreadable" in r.stderr and "alarm=1" in r.stderr, r.stderr
    assert db.is_dir() and not listening(port)


def test_usage_and_missing_configuration(tmp_path):
    r = subprocess.run([str(BIN / "suido-broker-start")], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run([str(BIN / "suido-broker-start"), str(tmp_path / "none.conf")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "none.conf" in r.stderr


def process_uid(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Uid:"):
            return {int(u) for u in line.split()[1:]}
    raise AssertionError("no Uid line")


def test_suite_broker_runs_as_its_own_user(suite):
    """The deployment's broker (broker/mkconf.sh) never runs as root: real, effective and saved
    uid are the mosquitto user's, and it holds its key and persistence, not the rest."""
    pw = pwd.getpwnam("mosquitto")
    assert process_uid(suite.procs["mosquitto"].pid) == {pw.pw_uid}
    conf = (suite.dir / "mosquitto" / "mosquitto.conf").read_text()
    assert "\nuser mosquitto\n" in conf and "\nuser root\n" not in conf
    assert (suite.dir / "broker" / "server.key").stat().st_uid == pw.pw_uid
    assert (suite.dir / "mosquitto" / "data").stat().st_uid == pw.pw_uid
    assert (suite.dir / "ca").stat().st_uid == 0  # the CA (and its key) stay root's
    assert (suite.dir / "mosquitto" / "acl").stat().st_uid == 0  # read, never written by it


def test_mkconf_refuses_a_root_broker(tmp_path):
    r = subprocess.run([str(TOP / "broker" / "mkconf.sh"), str(tmp_path),
                        str(tmp_path / "out"), "1883", "--user", "root"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 1 and "never runs as root" in r.stderr, r.stderr
