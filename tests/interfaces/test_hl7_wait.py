"""The HL7 listener waits for the broker and resynchronises on MLLP frames (issue 18).

Regressions: the listener exited after 30 s when the broker was not up yet, never opening its port;
bytes before a valid frame swallowed that frame without an ACK."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import hl7
import pytest
from hypothesis import given
from hypothesis import strategies as st
from stack_fixtures import free_port, settings_for
from test_hl7 import TS, _consume, fixed_times_accepted, oru

from icuwatch.core import topics
from icuwatch.deploy import broker
from icuwatch.interfaces import hl7_encode
from icuwatch.interfaces.hl7_listener import FrameTooLarge, Hl7Listener, read_frame

SB, EB = b"\x0b", b"\x1c\r"


def _frames(data: bytes, limit: int = 1024) -> list[tuple[bytes, int] | str]:
    async def go():
        reader = asyncio.StreamReader(limit=limit)
        reader.feed_data(data)
        reader.feed_eof()
        out: list[tuple[bytes, int] | str] = []
        while True:
            try:
                out.append(await read_frame(reader))
            except FrameTooLarge:
                out.append("too large")
            except asyncio.IncompleteReadError:
                return out

    return asyncio.run(go())


@given(
    noise=st.binary(max_size=300).filter(lambda b: SB not in b),
    body=st.binary(min_size=1, max_size=200).filter(lambda b: SB not in b and EB not in b and b[-1:] != b"\x1c"),
)
def test_noise_before_a_frame_is_skipped_and_the_frame_read(noise, body):
    assert _frames(noise + SB + body + EB + SB + b"next" + EB) == [(body, len(noise)), (b"next", 0)]


def test_a_half_frame_then_a_new_frame_and_an_oversized_frame():
    assert _frames(SB + b"cut off" + SB + b"MSH|whole" + EB) == [(b"MSH|whole", 8)]
    assert _frames(SB + b"x" * 5000 + EB + SB + b"after" + EB) == ["too large", (b"after", 0)]
    assert _frames(b"y" * 5000 + SB + b"after" + EB) == [(b"after", 5000)]


def _ack_code(sock: socket.socket) -> tuple[str, str]:
    data = b""
    while not data.endswith(EB):
        chunk = sock.recv(65536)
        assert chunk, "connection closed without an ACK"
        data += chunk
    return hl7_encode.ack_code(hl7.parse(data[data.index(SB) + 1 : -2].decode()))


@pytest.mark.timeout(60)
def test_listener_opens_at_once_answers_ae_while_the_broker_is_away_then_aa(tmp_path):
    settings, _ = settings_for(tmp_path, ICUWATCH_BROKER=f"127.0.0.1:{free_port()}")
    settings = fixed_times_accepted(settings).model_copy(update={"hl7_ack_timeout_s": 3.0})
    pid = f"wait-{uuid.uuid4().hex[:8]}"
    message = SB + oru(pid, f"NM|8867-4^HR^LN||101|/min|||||F|||{TS}").encode() + EB

    async def scenario():
        listener = Hl7Listener(settings)
        await listener.start("127.0.0.1", 0)  # returns at once: the broker is not there
        loop = asyncio.get_running_loop()
        try:
            with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:

                def exchange(data: bytes) -> tuple[str, str]:
                    sock.sendall(data)
                    return _ack_code(sock)

                code, text = await loop.run_in_executor(None, exchange, message)
                assert (code, text) == ("AE", "not stored, retry: broker unavailable")
                await loop.run_in_executor(None, broker.start, settings)
                deadline = time.monotonic() + 20
                while code != "AA" and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    code, text = await loop.run_in_executor(None, exchange, message)
                assert code == "AA", text
                # noise before a frame on the same connection: the frame is still acknowledged
                code, text = await loop.run_in_executor(None, exchange, b"\r\nnot mllp" + message)
                assert code == "AA", text
                assert listener.stats["bad_frames"] == 1
                # the broker goes away and comes back (empty: memory storage): AE meanwhile, then AA again
                await loop.run_in_executor(None, broker.stop, settings)
                code, text = await loop.run_in_executor(None, exchange, message)
                assert code == "AE", text
                await loop.run_in_executor(None, broker.start, settings)
                deadline = time.monotonic() + 30
                while code != "AA" and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    code, text = await loop.run_in_executor(None, exchange, message)
                assert code == "AA", text
        finally:
            await listener.close()

    try:
        asyncio.run(scenario())
        records = _consume(settings, topics.VITALS, pid, 1)  # the broker restarted empty
        assert records and all(r["hr"] == 101 for r in records)
    finally:
        broker.stop(settings)
