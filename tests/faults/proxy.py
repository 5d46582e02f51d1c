"""A TCP relay between MQTT clients and the broker that the fault runner can cut and heal: the
link it stands for goes dark without a word, as a real partition does.

    python3 proxy.py LISTEN_PORT UPSTREAM_PORT STATUS_FILE

SIGUSR1 cuts, SIGUSR2 heals, SIGHUP holds, SIGALRM drops, SIGTERM stops. While cut, nothing is
read from either side of any
connection (so nothing is forwarded, and TCP's buffers fill as they would in front of a dead
link) and no new connection is accepted (the kernel's accept queue holds them: their TLS
handshake stalls and the client's connect times out, as with a partition). Healing resumes
reading, which delivers what the endpoints wrote meanwhile if they still hold the connection, and
accepts what queued. Holding stops only the clients' direction (what they send waits, what the
broker sends still reaches them), the moment a link starts to fail; dropping closes every relayed
connection at once (what was not relayed yet is lost, as with a link that dies) and opens the
relay again. Bytes are relayed unchanged (TLS passes end to end). After each change of state the
proxy rewrites STATUS_FILE with one line: `state=cut|held|open conns=N accepted=N bytes_up=N
bytes_down=N changes=N`, so the caller knows when a change is in force. RelayProcess (below)
runs and drives it from a test."""
import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

HIGH_WATER = 1 << 20


class Side(asyncio.Protocol):
    """One end of a relayed connection; data it receives is written to its peer."""

    def __init__(self, relay, name):
        self.relay, self.name = relay, name
        self.transport = None
        self.peer = None
        self.peer_full = False
        self.pending = []  # upstream bytes that arrived before the upstream side connected

    def connection_made(self, transport):
        self.transport = transport
        self.relay.sides.add(self)
        if self.relay.paused(self):
            transport.pause_reading()

    def data_received(self, data):
        if self.name == "client":
            self.relay.bytes_up += len(data)
        else:
            self.relay.bytes_down += len(data)
        if self.peer and self.peer.transport:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self):
        if self.peer and self.peer.transport and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
            return True
        self.close()
        return False

    def connection_lost(self, exc):
        self.relay.sides.discard(self)
        self.transport = None
        if self.peer and self.peer.transport:
            self.peer.transport.close()

    # flow control: a peer that cannot keep up stops this side's reading
    def pause_writing(self):
        if self.peer and self.peer.transport:
            self.peer.peer_full = True
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if self.peer and self.peer.transport:
            self.peer.peer_full = False
            if not self.relay.paused(self.peer):
                self.peer.transport.resume_reading()

    def close(self):
        if self.transport:
            self.transport.close()


class Relay:
    def __init__(self, listen_port, upstream_port, status_file):
        self.listen_port, self.upstream_port = listen_port, upstream_port
        self.status_file = status_file
        self.cut = False
        self.held = False  # the clients' direction only
        self.sides = set()
        self.accepted = 0
        self.bytes_up = self.bytes_down = 0
        self.changes = 0
        self.lsock = None
        self.accepting = None

    def write_status(self):
        tmp = self.status_file + ".tmp"
        with open(tmp, "w") as f:
            state = "cut" if self.cut else "held" if self.held else "open"
            f.write(f"state={state} conns={len(self.sides) // 2} "
                    f"accepted={self.accepted} bytes_up={self.bytes_up} "
                    f"bytes_down={self.bytes_down} changes={self.changes}\n")
        os.replace(tmp, self.status_file)

    async def serve(self):
        loop = asyncio.get_running_loop()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.listen_port))
        self.lsock.listen(4096)
        self.lsock.setblocking(False)
        loop.add_signal_handler(signal.SIGUSR1, self.set_cut, True)
        loop.add_signal_handler(signal.SIGUSR2, self.set_cut, False)
        loop.add_signal_handler(signal.SIGHUP, self.hold)
        loop.add_signal_handler(signal.SIGALRM, self.drop)
        self.stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, lambda: self.stop.done() or self.stop.set_result(0))
        self.write_status()
        self.accepting = loop.create_task(self.accept_loop())
        await self.stop
        self.accepting.cancel()
        for s in list(self.sides):
            s.close()

    async def accept_loop(self):
        loop = asyncio.get_running_loop()
        while True:
            if self.cut:
                await self.healed.wait()
            conn, _ = await loop.sock_accept(self.lsock)
            self.accepted += 1
            loop.create_task(self.relay(conn))

    async def relay(self, conn):
        loop = asyncio.get_running_loop()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = Side(self, "client")
        upstream = Side(self, "upstream")
        client.peer, upstream.peer = upstream, client
        try:
            await loop.connect_accepted_socket(lambda: client, conn)
            await loop.create_connection(lambda: upstream, "127.0.0.1", self.upstream_port)
        except OSError:
            client.close()
            return
        for p in (client, upstream):
            if p.transport:
                p.transport.set_write_buffer_limits(HIGH_WATER)
        if client.pending and upstream.transport:
            for d in client.pending:
                upstream.transport.write(d)
            client.pending = []
        if not client.transport and upstream.transport:
            upstream.transport.close()

    def paused(self, side):
        """Whether side must not read now."""
        return self.cut or (self.held and side.name == "client")

    def hold(self):
        self.held = True
        self.changes += 1
        for s in list(self.sides):
            if s.transport and s.name == "client":
                s.transport.pause_reading()
        self.write_status()

    def drop(self):
        for s in list(self.sides):
            if s.transport:
                s.transport.abort()
        self.held = False
        self.changes += 1
        self.write_status()

    def set_cut(self, cut):
        if cut == self.cut:
            self.write_status()
            return
        self.cut = cut
        self.changes += 1
        if cut:
            self.healed.clear()
        for s in list(self.sides):
            if not s.transport:
                continue
            if cut:
                s.transport.pause_reading()
            elif not s.peer_full and not self.paused(s):
                s.transport.resume_reading()
        if not cut:
            self.healed.set()
        self.write_status()


class RelayProcess:
    """proxy.py in a process of its own on listen_port, relaying to upstream_port; each change
    waits until the proxy reports it in force (RuntimeError if it does not within 5 s)."""

    def __init__(self, listen_port, upstream_port, status_file, log_file):
        self.port = listen_port
        self.status_file = pathlib.Path(status_file)
        self.p = subprocess.Popen([sys.executable, __file__, str(listen_port), str(upstream_port),
                                   str(self.status_file)], stdout=subprocess.DEVNULL,
                                  stderr=open(log_file, "w"))
        self._wait(lambda st: st.get("state") == "open", "start")

    def status(self):
        try:
            line = self.status_file.read_text().strip()
        except FileNotFoundError:
            return {}
        return dict(kv.split("=", 1) for kv in line.split())

    def _wait(self, pred, what):
        until = time.monotonic() + 5
        while time.monotonic() < until:
            if pred(self.status()):
                return
            time.sleep(0.02)
        raise RuntimeError(f"relay on port {self.port}: did not {what}")

    def _signal(self, sig, state):
        changes = int(self.status().get("changes", 0))
        self.p.send_signal(sig)
        self._wait(lambda st: st.get("state") == state and int(st.get("changes", 0)) > changes,
                   f"become {state}")

    def cut(self):
        self._signal(signal.SIGUSR1, "cut")

    def heal(self):
        self._signal(signal.SIGUSR2, "open")

    def hold(self):
        self._signal(signal.SIGHUP, "held")

    def drop(self):
        self._signal(signal.SIGALRM, "open")

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


async def main():
    lport, uport, status = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    r = Relay(lport, uport, status)
    r.healed = asyncio.Event()
    r.healed.set()
    # a status line every second as well, so that the caller can watch the counters
    async def tick():
        while True:
            await asyncio.sleep(1)
            r.write_status()
    asyncio.get_running_loop().create_task(tick())
    await r.serve()


if __name__ == "__main__":
    asyncio.run(main())
