"""HL7 listener throughput into the real broker: ORU^R01 messages per second answered AA.

Starts a Tansu broker on a spare port (or uses ``--broker``), runs ``icuwatch hl7-listen`` in a
subprocess against it, then sends vital-sign ORU^R01 messages (7 OBX each, one ``icu.vitals`` per
message) over MLLP with python-hl7's client: first one client sending sequentially (each message
waits for its ACK), then ``--clients`` concurrent clients. Every ACK must be AA. Prints one JSON object.

    icuwatch bench hl7 [--messages 400] [--clients 4] [--broker host:port]
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hl7.mllp

from icuwatch.core.schemas import Vitals
from icuwatch.core.settings import Settings
from icuwatch.interfaces.hl7_encode import ack_code, to_hl7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def messages(client: int, n: int, t0: float) -> list[str]:
    return [
        to_hl7(
            Vitals(
                patient_id=f"bench-{client}-{i % 16}",
                event_time=t0 + i,
                hr=80 + i % 7,
                spo2=97,
                rr=16,
                sbp=120,
                dbp=70,
                map=87,
                temp=37.0,
            )
        )
        for i in range(n)
    ]


async def run_client(port: int, texts: list[str], latencies: list[float]) -> None:
    reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    try:
        for text in texts:
            t = time.perf_counter()
            writer.writeblock(text.encode())
            await writer.drain()
            code, reason = ack_code(await asyncio.wait_for(reader.readmessage(), 60))
            if code != "AA":
                raise RuntimeError(f"{code}: {reason}")
            latencies.append(time.perf_counter() - t)
    finally:
        writer.close()


async def phase(port: int, clients: int, per_client: int, t0: float) -> dict:
    batches = [messages(c, per_client, t0) for c in range(clients)]
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(run_client(port, b, latencies) for b in batches))
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "clients": clients,
        "messages": len(lat),
        "seconds": round(wall, 3),
        "messages_per_s": round(len(lat) / wall, 1),
        "ack_latency_ms": {
            "p50": round(1000 * statistics.median(lat), 2),
            "p95": round(1000 * lat[int(0.95 * (len(lat) - 1))], 2),
        },
    }


def run(messages: int = 400, clients: int = 4, broker: str | None = None) -> dict:
    """``icuwatch bench hl7``: ``messages`` per phase, the concurrent phase over ``clients`` connections,
    through a listener on ``broker`` (default: a Tansu broker of its own)."""
    state = Path(tempfile.mkdtemp(prefix="hl7bench-"))
    own_broker = broker is None
    broker = broker or f"127.0.0.1:{free_port()}"
    settings = Settings(broker=broker, state_dir=state)
    started = False
    if own_broker:
        from icuwatch.deploy import broker as tansu

        tansu.start(settings)
        started = True
    port = free_port()
    env = {**os.environ, "ICUWATCH_BROKER": broker, "ICUWATCH_STATE_DIR": str(state)}
    log = open(state / "hl7-listen.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "icuwatch.cli.main", "hl7-listen", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_port(port)
        t0 = time.time() - 3e5  # observation times in the listener's live window (days back, none ahead)
        asyncio.run(phase(port, 1, 20, t0))  # warm-up: connections, metadata
        seq = asyncio.run(phase(port, 1, messages, t0 + 1e5))
        conc = asyncio.run(phase(port, clients, max(1, messages // clients), t0 + 2e5))
        return {
            "broker": broker,
            "started_broker": started,
            "obx_per_message": 7,
            "cpu_count": os.cpu_count(),
            "sequential": seq,
            "concurrent": conc,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        if started:
            tansu.stop(settings)
