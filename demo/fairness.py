"""Per-client fairness for the public demo: one visitor cannot take the whole queue.

Why here: Gradio's queue bounds work globally (`--queue-size` turns wait, `--concurrency`
run) but not per visitor, so one client joining 150 times in 1.6 s filled it and every
other visitor was told "Queue is full". Every turn, whatever the route
(`/gradio_api/queue/join` from the page and gradio_client, `/gradio_api/call/{api}` and
`/call/v2/{api}` from raw HTTP), enters through the queue's `push`, and stays in its
`event_ids_to_events` until its job has finished, failed or been cancelled, or its client
went away, whether or not anyone reads the result stream. So, per client:

- at the door: a client that already has `per_client_queue` turns waiting or running is
  refused with HTTP 429 and one line (the page shows it as the turn's error, gradio_client
  raises an HTTP error, `Retry-After` says when to try again); nothing is queued for it;
- at the head of the queue: a waiting turn whose client already has
  `per_client_concurrency` turns running is passed over (it keeps its place), so the
  workers go to other visitors first.

Who a client is: the IP address of the connection, an IPv6 address by its /64 (one machine
usually holds the whole prefix). Not the Gradio session hash: the client chooses it and a
flood takes a fresh one per join. Behind a reverse proxy every visitor arrives from the
proxy's address, so X-Forwarded-For is believed only from `trusted_proxies` (addresses or
networks; none by default, and uvicorn's own proxy-header rewriting is switched off by
`demo.server`): the client is then the right-most address in it that is not a trusted
proxy. Visitors behind one NAT share one budget: raise the limits for a classroom; 0 turns
a limit off.

Settings: `ClientLimits.from_settings()` takes the CLI options (`--per-client-queue`,
`--per-client-concurrency`, `--trusted-proxies`), else `$HERBARIA_PER_CLIENT_QUEUE`,
`$HERBARIA_PER_CLIENT_CONCURRENCY`, `$HERBARIA_TRUSTED_PROXIES` (comma-separated), else
4 waiting or running, 1 running, no trusted proxy. A refused client is logged (its address,
at most once a minute per client).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from retrieval.errors import BadInput

log = logging.getLogger("herbaria.demo")

DEFAULT_PER_CLIENT_QUEUE = 4
DEFAULT_PER_CLIENT_CONCURRENCY = 1
RETRY_AFTER_S = 5
LOG_EVERY_S = 60.0
REFUSAL = ("Too many questions at once from your address: at most {limit} may wait or be answered at a time. "
           "Wait for your earlier answers, then ask again.")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: str | Iterable[str] | None) -> tuple[IPNetwork, ...]:
    """Trusted proxies as networks, from "127.0.0.1, 10.0.0.0/8" or a list; a bad entry is a one-line BadInput."""
    if values is None:
        return ()
    items = values.split(",") if isinstance(values, str) else list(values)
    networks = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise BadInput(f"trusted proxy {item!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)") \
                from None
    return tuple(networks)


def _non_negative(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be a whole number (0 = no limit), not {value!r}") from None
    if number < 0:
        raise BadInput(f"{name} must be 0 (no limit) or more, not {number}")
    return number


@dataclass(frozen=True)
class ClientLimits:
    """How much of the queue one client may hold: `per_client_queue` turns waiting or running, of which
    `per_client_concurrency` running at once (0: no limit); X-Forwarded-For believed from `trusted_proxies`."""

    per_client_queue: int = DEFAULT_PER_CLIENT_QUEUE
    per_client_concurrency: int = DEFAULT_PER_CLIENT_CONCURRENCY
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _non_negative("the per-client queue", self.per_client_queue)
        _non_negative("the per-client concurrency", self.per_client_concurrency)
        parse_networks(self.trusted_proxies)

    @classmethod
    def from_settings(cls, per_client_queue: int | None = None, per_client_concurrency: int | None = None,
                      trusted_proxies: str | Sequence[str] | None = None,
                      env: Mapping[str, str] | None = None) -> ClientLimits:
        """Each setting from the argument when given (the CLI), else the environment, else the default."""
        env = os.environ if env is None else env

        def pick(value: Any, name: str, default: Any) -> Any:
            if value is not None:
                return value
            return env[name] if env.get(name, "").strip() else default

        queue = _non_negative("--per-client-queue ($HERBARIA_PER_CLIENT_QUEUE)",
                              pick(per_client_queue, "HERBARIA_PER_CLIENT_QUEUE", DEFAULT_PER_CLIENT_QUEUE))
        running = _non_negative("--per-client-concurrency ($HERBARIA_PER_CLIENT_CONCURRENCY)",
                                pick(per_client_concurrency, "HERBARIA_PER_CLIENT_CONCURRENCY",
                                     DEFAULT_PER_CLIENT_CONCURRENCY))
        proxies = parse_networks(pick(trusted_proxies, "HERBARIA_TRUSTED_PROXIES", ""))
        return cls(queue, running, tuple(str(n) for n in proxies))

    def describe(self) -> str:
        """One line for the server's start-up message."""
        def shown(n: int) -> str:
            return str(n) if n else "no limit"
        proxies = ", ".join(self.trusted_proxies) or "none"
        return (f"per client: {shown(self.per_client_queue)} waiting or running, "
                f"{shown(self.per_client_concurrency)} at once; trusted proxies: {proxies}")


def _address(value: str | None) -> IPAddress | None:
    """An address from a peer or an X-Forwarded-For hop ("1.2.3.4", "1.2.3.4:80", "[::1]:80", "::1")."""
    if not value:
        return None
    text = value.strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _client_key(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def client_identity(peer: str | None, forwarded_for: Sequence[str] = (),
                    trusted: Sequence[IPNetwork] = ()) -> str:
    """Who a request counts against: the peer's address, or, while the hop is a trusted proxy, the address
    that proxy forwarded for (walking X-Forwarded-For from the right, the part the client cannot forge)."""
    address = _address(peer)
    if address is None:
        return peer or "unknown"
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    while hops and any(address in net for net in trusted if net.version == address.version):
        forwarded = _address(hops.pop())
        if forwarded is None:  # the proxy wrote something that is no address: stay with the proxy
            break
        address = forwarded
    return _client_key(address)


class ClientFairness:
    """The per-client limits applied to one Gradio queue (see the module docstring for why it hooks there)."""

    REQUIRED = ("push", "get_events", "event_ids_to_events", "active_jobs", "event_queue_per_concurrency_id")

    def __init__(self, queue: Any, limits: ClientLimits) -> None:
        missing = [name for name in self.REQUIRED if not hasattr(queue, name)]
        if missing:
            raise RuntimeError(f"this Gradio's queue lacks {', '.join(missing)}: per-client limits cannot be applied")
        self.queue = queue
        self.limits = limits
        self.trusted = parse_networks(limits.trusted_proxies)
        self.client_of: dict[str, str] = {}  # event id -> client, while the event may still be live
        self.joining: Counter[str] = Counter()  # joins between the check and the queue's answer
        self.refused = 0
        self._logged: dict[str, float] = {}
        self._push = queue.push
        self._get_events = queue.get_events
        queue.push = self.push
        queue.get_events = self.get_events

    def identity(self, request: Any) -> str:
        peer = request.client.host if getattr(request, "client", None) else None
        return client_identity(peer, request.headers.getlist("x-forwarded-for") if self.trusted else (), self.trusted)

    def in_flight(self, client: str) -> int:
        """The client's turns waiting or running (finished ones are forgotten here)."""
        live = self.queue.event_ids_to_events
        for event_id in [e for e in self.client_of if e not in live]:
            del self.client_of[event_id]
        return sum(1 for c in self.client_of.values() if c == client) + self.joining[client]

    async def push(self, body: Any, request: Any, username: str | None) -> Any:
        client = self.identity(request)
        limit = self.limits.per_client_queue
        if limit and self.in_flight(client) >= limit:
            self._refuse(client, limit)
        self.joining[client] += 1
        try:
            success, event_id, state = await self._push(body, request, username)
        finally:
            self.joining[client] -= 1
            if self.joining[client] <= 0:
                del self.joining[client]
        if success and isinstance(event_id, str) and event_id in self.queue.event_ids_to_events:
            self.client_of[event_id] = client
        return success, event_id, state

    def _refuse(self, client: str, limit: int) -> None:
        from fastapi import HTTPException

        self.refused += 1
        now = time.monotonic()
        if now - self._logged.get(client, -LOG_EVERY_S) >= LOG_EVERY_S:
            if len(self._logged) > 4096:
                self._logged.clear()
            self._logged[client] = now
            log.warning("client %s refused: %d turns waiting or running (per-client limit %d); %d refusals so far",
                        client, self.in_flight(client), limit, self.refused)
        raise HTTPException(status_code=429, detail=REFUSAL.format(limit=limit),
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    def get_events(self) -> Any:
        """Gradio's choice of the next turn to run, with the turns of clients at their running limit hidden."""
        limit = self.limits.per_client_concurrency
        if not limit:
            return self._get_events()
        running = Counter(self.client_of.get(e._id) for job in self.queue.active_jobs if job for e in job)
        busy = {c for c, n in running.items() if c is not None and n >= limit}
        if not busy:
            return self._get_events()
        held = []
        for event_queue in self.queue.event_queue_per_concurrency_id.values():
            hidden = {id(e) for e in event_queue.queue if self.client_of.get(e._id) in busy}
            if hidden:
                held.append((event_queue, list(event_queue.queue), hidden))
                event_queue.queue[:] = [e for e in event_queue.queue if id(e) not in hidden]
        try:
            return self._get_events()
        finally:  # put the passed-over turns back in their places, minus what was taken
            for event_queue, before, hidden in held:
                kept = {id(e) for e in event_queue.queue} | hidden
                event_queue.queue[:] = [e for e in before if id(e) in kept]


def install_client_limits(blocks: Any, limits: ClientLimits) -> ClientFairness | None:
    """Apply `limits` to `blocks`' queue (call after `blocks.queue()`); None when both limits are off."""
    if not (limits.per_client_queue or limits.per_client_concurrency):
        return None
    return ClientFairness(blocks._queue, limits)
