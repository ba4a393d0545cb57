"""Audit of the completion-webhook egress path: what a school's callback URL can make the operator do.

Pure vetting is table-tested against the forms an SSRF attacker tries (numeric IPv4 shorthands,
IPv4 embedded in IPv6, scoped and reserved IPv6, userinfo, control characters, Unicode digits and
dots). The network path uses real loopback servers: each URL refused without an allowlist is shown
to go through once loopback is allowlisted, so the refusal, not a dead port, is what stopped it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from rollcall_operator import egress, webhook
from rollcall_operator.egress import Allowlist, EgressDenied, vet_address, vet_url

HTTP = Allowlist(allow_http=True)
LOOPBACK = Allowlist.parse(cidrs=["127.0.0.0/8"], allow_http=True)
SECRET = b"school-a-signing-key"

CIRCLED_127 = "\u2460\u2461\u2466"  # circled digits one, two, seven: NFKC folds them to 127


def fw(text: str) -> str:
    """``text`` in full-width letters and digits (U+FF01..), which IDNA folds back to ASCII."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in text)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.mark.parametrize(
    "url",
    [
        # IPv4 shorthands that inet_aton/getaddrinfo (or aiohttp) read as 127.0.0.1
        "https://2130706433/", "https://0x7f.1/", "https://127.1/", "https://0177.0.0.1/",
        "https://0x7f000001/", "https://0x7f.0x0.0x0.0x1/", "https://127.0.1/", "https://2130706433./",
        # Unicode digits and dots that IDNA (the client's URL parser) folds into an IP literal
        f"https://{fw('127.0.0.1')}/", f"https://127.0.0.{fw('1')}/", f"https://{CIRCLED_127}.0.0.1/",
        f"https://{fw('169.254.169.254')}/", "https://127\u30020\u30020\u30021/",
        f"https://{fw('10.0.0.1')}/",
        # cluster names spelled with full-width letters fold into *.svc / localhost
        f"https://kubernetes.default.{fw('svc')}/", f"https://{fw('localhost')}/",
        # IPv6 literals
        "https://[::ffff:127.0.0.1]/", "https://[::ffff:7f00:1]/", "https://[64:ff9b::a9fe:a9fe]/",
        "https://[fe80::1%25eth0]/", "https://[::]/", "https://[::1]/", "https://[fc00::1]/",
        "https://[fd00:ec2::254]/", "https://[ff02::1]/", "https://[::ffff:0:7f00:1]/",
        "https://[2002:a9fe:a9fe::]/",
        # other non-public IPv4
        "https://0.0.0.0/", "https://100.64.0.1/", "https://169.254.169.254/", "https://224.0.0.1/",
        # userinfo, backslashes, control characters
        "https://good@127.0.0.1/", "https://good:pw@hooks.example.org/",
        "https://hooks.example.org\\@127.0.0.1/", "https://127.0.0.1\\.hooks.example.org/",
        "https://hooks.example.org\n@127.0.0.1/", "https://127.0.0.\t1/", "https://127.0.0.1%2f.x/",
        # schemes and ports
        "http://hooks.example.org/", "ftp://hooks.example.org/", "https://hooks.example.org:0/",
        "https://hooks.example.org:65536/", "https://hooks.example.org:+443/",
    ],
)  # fmt: skip
def test_vet_url_refuses_internal_destinations_in_any_spelling(url: str) -> None:
    with pytest.raises(EgressDenied):
        vet_url(url, Allowlist())


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://hooks.example.org/x", "hooks.example.org"),
        ("https://93.184.215.14:8443/x", "93.184.215.14"),
        ("https://[2606:4700:4700::1111]/x", "2606:4700:4700::1111"),
        ("https://[64:ff9b::5db8:d70e]/x", "64:ff9b::5db8:d70e"),  # NAT64 of a public address
        ("https://münchen.example/x", "xn--mnchen-3ya.example"),  # IDN: vetted as it is resolved
        ("https://HOOKS.Example.org./x", "hooks.example.org"),
        ("https://1st.example.org/x", "1st.example.org"),  # digits in a label are fine
    ],
)
def test_vet_url_passes_public_destinations_and_names_the_host_dialled(url: str, host: str) -> None:
    assert vet_url(url, Allowlist()) == host


@pytest.mark.parametrize(
    "addr", ["::ffff:0:7f00:1", "::ffff:0:0:7f00:1", "100::1", "5f00::1", "::a9fe:a9fe"]
)
def test_reserved_ipv6_space_is_denied(addr: str) -> None:
    """SIIT (::ffff:0:0:0/96) and other unallocated IPv6 space is no school's receiver."""
    with pytest.raises(EgressDenied):
        vet_address(addr, Allowlist())


def test_allowlisted_host_name_is_matched_in_its_resolved_spelling() -> None:
    allow = Allowlist.parse(hosts=["hooks.district.svc"])
    assert vet_url("https://hooks.district.svc/x", allow) == "hooks.district.svc"
    assert vet_url(f"https://hooks.district.{fw('svc')}/x", allow) == "hooks.district.svc"
    with pytest.raises(EgressDenied):
        vet_url("https://other.district.svc/x", allow)


# --- the real network path ----------------------------------------------------------------------


class Receiver:
    """A loopback TCP server on this event loop; ``handler`` plays the receiver byte by byte."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((headers, body))


@asynccontextmanager
async def receiver(make: Callable[[Receiver], Handler]) -> AsyncIterator[Receiver]:
    rcv = Receiver(lambda r, w: asyncio.sleep(0))
    rcv.handler = make(rcv)
    server = await asyncio.start_server(rcv._serve, "127.0.0.1", 0)
    rcv.port = server.sockets[0].getsockname()[1]
    try:
        yield rcv
    finally:
        server.close()


def answering(status: str = "200 OK", extra: bytes = b"") -> Callable[[Receiver], Handler]:
    def make(rcv: Receiver) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await rcv.read_request(reader)
            writer.write(f"HTTP/1.1 {status}\r\n".encode() + extra + b"Content-Length: 0\r\n\r\n")
            await writer.drain()

        return handle

    return make


async def post(
    url: str, allow: Allowlist, timeout: float = 5.0, body: bytes = b"{}"
) -> webhook.Attempt:
    async with webhook.session(allow) as http:
        return await webhook.post(
            http, url, body, allow=allow, secret=SECRET, delivery="uid-1", timestamp="1700000000",
            timeout=timeout,
        )  # fmt: skip


@pytest.mark.parametrize(
    "host",
    [
        fw("127.0.0.1"),
        f"{CIRCLED_127}.0.0.1",
        f"127.0.0.{fw('1')}",
        "127.1",
        "0177.0.0.1",
        "0x7f.1",
    ],
)
async def test_unicode_and_shorthand_loopback_is_never_contacted(host: str) -> None:
    async with receiver(answering()) as rcv:
        got = await post(f"http://{host}:{rcv.port}/h", HTTP)
        assert (got.delivered, got.retry, got.status) == (False, False, None)  # refused, final
        assert rcv.connections == 0
        # the control: the canonical spelling, allowlisted, does reach the receiver
        assert (await post(f"http://127.0.0.1:{rcv.port}/h", LOOPBACK)).delivered


async def test_a_redirect_to_an_internal_address_is_not_followed() -> None:
    async with receiver(answering()) as inner:
        to = f"Location: http://127.0.0.1:{inner.port}/admin\r\n".encode()
        async with receiver(answering("307 Temporary Redirect", to)) as outer:
            got = await post(f"http://127.0.0.1:{outer.port}/h", LOOPBACK)
        assert got.status == 307 and not got.delivered and got.error == "HTTP 307"
        assert len(outer.requests) == 1 and inner.connections == 0


class Rebinding(AbstractResolver):
    """A DNS that answers a public address first and loopback on every later query."""

    def __init__(self) -> None:
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls += 1
        addr = "93.184.215.14" if self.calls == 1 else "127.0.0.1"
        return [ResolveResult(hostname=host, host=addr, port=port, family=socket.AF_INET,
                              proto=0, flags=0)]  # fmt: skip

    async def close(self) -> None:
        pass


async def test_rebinding_between_two_deliveries_is_vetted_again_at_connect() -> None:
    """No DNS cache: every connect vets its own answer, so a later private answer is refused."""
    dns = Rebinding()
    early = await egress.VettingResolver(HTTP, dns).resolve("rebind.example", 80)
    assert [a["host"] for a in early] == ["93.184.215.14"]
    async with receiver(answering()) as rcv:
        async with webhook.session(HTTP) as http:
            http.connector._resolver = egress.VettingResolver(HTTP, dns)  # type: ignore[union-attr]
            got = await webhook.post(
                http, f"http://rebind.example:{rcv.port}/h", b"{}", allow=HTTP, secret=SECRET,
                delivery="d", timestamp="1", timeout=5,
            )  # fmt: skip
        assert got.error == webhook.DENIED and dns.calls == 2 and rcv.connections == 0


async def test_body_is_signed_exactly_as_sent_with_the_timestamp_and_no_secret() -> None:
    body = webhook.payload(
        {"metadata": {"namespace": "school-a", "name": "rj", "uid": "uid-1"},
         "status": {"phase": "Succeeded", "message": "ok"}}
    )  # fmt: skip
    async with receiver(answering()) as rcv:
        got = await post(f"http://127.0.0.1:{rcv.port}/h", LOOPBACK, body=body)
    assert got.delivered
    [(headers, received)] = rcv.requests
    assert received == body
    ts = headers["x-rollcall-timestamp"]
    expected = hmac.new(SECRET, ts.encode() + b"." + received, hashlib.sha256).hexdigest()
    assert headers["x-rollcall-signature"] == f"sha256={expected}"
    assert headers["x-rollcall-delivery"] == "uid-1"
    assert SECRET.decode() not in repr(headers) and SECRET not in received


async def test_slow_drip_status_line_is_cut_by_the_total_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def make(rcv: Receiver) -> Handler:
        async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await rcv.read_request(reader)
            for byte in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 10_000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

        return drip

    caplog.set_level(logging.DEBUG, logger="rollcall.operator.webhook")
    async with receiver(make) as rcv:
        start = time.monotonic()
        got = await post(f"http://127.0.0.1:{rcv.port}/h", LOOPBACK, timeout=1.0)
        elapsed = time.monotonic() - start
    assert got.error == webhook.UNREACHABLE and got.retry and elapsed < 3
    assert str(rcv.port) not in (got.error or "") and SECRET.decode() not in caplog.text


async def test_an_endless_slow_body_is_not_waited_for() -> None:
    """The status line is the answer: at most max_response_bytes are read, then the line is cut."""

    def make(rcv: Receiver) -> Handler:
        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await rcv.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                writer.write(b"1\r\na\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)

        return endless

    async with receiver(make) as rcv:
        start = time.monotonic()
        got = await post(f"http://127.0.0.1:{rcv.port}/h", LOOPBACK, timeout=5.0)
        assert time.monotonic() - start < 2 and got.delivered and got.status == 200


async def test_hung_receivers_of_one_school_do_not_time_out_another_schools_post() -> None:
    """One session serves every school: its pool must not be a queue shared with a hostile school."""

    def make(rcv: Receiver) -> Handler:
        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await rcv.read_request(reader)
            await asyncio.sleep(30)

        return hang

    async with (
        receiver(make) as slow,
        receiver(answering()) as fast,
        webhook.session(LOOPBACK) as http,
    ):

        async def send(port: int, timeout: float) -> webhook.Attempt:
            return await webhook.post(
                    http, f"http://127.0.0.1:{port}/h", b"{}", allow=LOOPBACK, secret=SECRET,
                    delivery="d", timestamp="1", timeout=timeout,
                )  # fmt: skip

        hostile = [asyncio.create_task(send(slow.port, 6.0)) for _ in range(120)]
        while len(slow.requests) < 100:
            await asyncio.sleep(0.05)
        got = await send(fast.port, 2.0)
        for task in hostile:
            task.cancel()
        await asyncio.gather(*hostile, return_exceptions=True)
    assert got.delivered, got


async def test_a_school_holds_at_most_its_own_slots() -> None:
    """Deliveries go through ``Slots``: 50 hung POSTs of one school open only ``per_school``
    connections, and another school's POST goes straight through."""
    slots = webhook.Slots(per_school=4)

    def make(rcv: Receiver) -> Handler:
        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await rcv.read_request(reader)
            await asyncio.sleep(30)

        return hang

    async with (
        receiver(make) as slow,
        receiver(answering()) as fast,
        webhook.session(LOOPBACK) as http,
    ):

        async def send(school: str, port: int, timeout: float) -> webhook.Attempt:
            async with slots(school):
                return await webhook.post(
                        http, f"http://127.0.0.1:{port}/h", b"{}", allow=LOOPBACK, secret=SECRET,
                        delivery="d", timestamp="1", timeout=timeout,
                    )  # fmt: skip

        hostile = [asyncio.create_task(send("school-a", slow.port, 1.0)) for _ in range(50)]
        await asyncio.sleep(0.5)
        assert slow.connections == 4
        got = await send("school-b", fast.port, 1.0)
        assert got.delivered, got
        first = await asyncio.gather(*hostile[:4])  # the first four time out, the next four go
        assert all(a.error == webhook.UNREACHABLE for a in first)
        for task in hostile:
            task.cancel()
        await asyncio.gather(*hostile, return_exceptions=True)
