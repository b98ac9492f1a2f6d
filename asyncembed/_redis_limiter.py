"""``RedisLimiter``: one account's budget shared by every worker, through Redis.

Each request costs one Lua script call that reads Redis's own clock (``TIME``, so the
hosts' clocks do not matter) and, GCRA-style, finds the earliest start that every
limit allows: the pause key, one "theoretical arrival time" per window (requests,
tokens), and the spend. If that start is more than ``horizon`` seconds away nothing
is reserved and the caller asks again later (a pause set after a reservation does not
revoke it, so reservations are kept short); otherwise each arrival time moves on by
the request's share of its limit (``60 / rpm`` s, ``tokens * 60 / tpm`` s) and the
caller waits the rest locally.

Windows: the requests are spaced evenly (no burst of a whole minute at once), so in
any 60 s there are at most ``requests_per_minute`` requests plus the one that opens
the window, and at most ``tokens_per_minute`` tokens plus that request's.

Spend: ``spent`` and ``billed_tokens`` live in one hash; each request in flight
holds a lease in a sorted set (member ``"<id>:<estimated cost>"``, score its expiry)
so that a worker that dies mid-request does not hold its commitment forever. The
check is the local one, over every worker's requests in flight.

Redis down: fail closed (:class:`LimiterUnavailableError`); see the class docstring.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ._config import Limits
from ._exceptions import LimiterUnavailableError, MissingExtraError
from ._limiter import Limiter, Reservation, budget_exceeded
from ._redis_conn import Link, Links, check_url, redact_url, secrets_of

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisLimiter"]

logger = logging.getLogger("asyncembed")

_POLL = 0.05
"""Seconds between asks while the spending cap waits on other workers' requests."""

# KEYS: requests TAT, tokens TAT, pause, spend hash, leases, lease counter.
# ARGV: tokens, rpm (0: none), tpm (0: none), horizon, max_cost (-1: none), lease seconds.
# Floats go back as strings: Redis turns a Lua number reply into an integer.
_RESERVE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local start = now
local paused = 0
local pause_end = tonumber(redis.call('GET', KEYS[3]) or '0')
if pause_end > now then start = pause_end; paused = pause_end - now end
if rpm > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat > start then start = tat end
end
if tpm > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat > start then start = tat end
end
local wait = start - now
local function f(x) return string.format('%.6f', x) end
if wait > horizon then return {'later', f(wait), f(paused)} end
local committed = 0
local member = ''
if cap >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  local spent = tonumber(redis.call('HGET', KEYS[4], 'spent') or '0')
  local billed = tonumber(redis.call('HGET', KEYS[4], 'billed_tokens') or '0')
  local held = redis.call('ZRANGE', KEYS[5], 0, -1)
  local estimate = -1
  if billed > 0 then estimate = tokens * spent / billed end
  if spent >= cap or (estimate >= 0 and spent + estimate > cap) then
    return {'exceeded', string.format('%.17g', spent), string.format('%.17g', estimate)}
  end
  if estimate < 0 then
    if #held > 0 then return {'budget', f(wait), f(paused)} end
    estimate = 0
  else
    local sum = 0
    for _, m in ipairs(held) do sum = sum + tonumber(string.match(m, ':(.*)$')) end
    if spent + sum + estimate > cap then return {'budget', f(wait), f(paused)} end
  end
  committed = estimate
  member = redis.call('INCR', KEYS[6]) .. ':' .. string.format('%.17g', committed)
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[6]), member)
end
local function advance(key, step)
  local tat = start + step
  redis.call('SET', key, f(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
if rpm > 0 then advance(KEYS[1], 60 / rpm) end
if tpm > 0 then advance(KEYS[2], tokens * 60 / tpm) end
return {'ok', f(wait), f(paused), string.format('%.17g', committed), member}
"""

# KEYS: pause. ARGV: seconds.
_PAUSE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local seconds = tonumber(ARGV[1])
local ends = tonumber(t[1]) + tonumber(t[2]) / 1000000 + seconds
if ends > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%.6f', ends), 'PX', math.ceil(seconds * 1000) + 1000)
end
return 1
"""

# KEYS: pause. Returns the seconds left of it.
_PAUSE_LEFT = """
local t = redis.call('TIME')
local left = tonumber(redis.call('GET', KEYS[1]) or '0') - tonumber(t[1]) - tonumber(t[2]) / 1000000
return {string.format('%.6f', math.max(0, left))}
"""

# KEYS: spend hash, leases. ARGV: lease member, cost ('' : none), billed tokens.
# A lease settles once: a settlement sent again (its first send was cancelled by the
# loop's shutdown, maybe after it ran) counts nothing the second time.
_SETTLE = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2]) end
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', KEYS[1], 'billed_tokens', ARGV[3]) end
return 1
"""

_SCRIPTS = {"reserve": _RESERVE, "pause": _PAUSE, "settle": _SETTLE, "pause_left": _PAUSE_LEFT}


def _redis() -> Any:
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:
        raise MissingExtraError(
            "asyncembed.RedisLimiter needs redis-py: pip install 'asyncembed[redis]'"
        ) from exc
    return redis_asyncio


class RedisLimiter(Limiter):
    """Share the RPM/TPM windows, the 429 pause and the spend through Redis.

    Give every worker (gunicorn processes, pods, Ray actors) an Embedder with the same
    ``limits`` and a ``RedisLimiter`` on the same Redis and ``key``: together they stay
    within ``requests_per_minute``, ``tokens_per_minute`` and ``max_cost``, and a 429
    answered to any of them pauses all of them for its ``Retry-After``::

        limiter = asyncembed.RedisLimiter("redis://redis.internal:6379/0", key="prod")
        embedder = asyncembed.Embedder(model, limits=limits, limiter=limiter)

    It holds only its settings: it connects on first use, and can be pickled to
    another process (which connects on its own). One limiter may serve several event
    loops (threads, a SyncEmbedder's loop, the framework integrations' per-loop
    Embedders): each loop gets its own connection, closed when that loop shuts down
    (``asyncio.run()`` and the like). ``await limiter.aclose()`` (or ``async with
    limiter:``) closes them all sooner; the Embedder does not close a limiter it was
    given.

    Windows are paced evenly (one request every ``60 / requests_per_minute`` s), so
    any 60 s hold at most the limit plus the one request that opens the window. The
    spend (``spent``, ``billed_tokens``) stays under ``key`` across runs until you
    delete it (or use a new ``key``), so one ``max_cost`` can cap a whole job. When
    Redis cannot be reached, requests fail at once with
    :class:`LimiterUnavailableError` (fail closed) and work again once it is back.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS,
            same form) or ``unix:///path/to.sock[?db=0&password=...]``. The password
            is never shown in a repr, log or error.
        key: The prefix of every Redis key used; workers that share a budget share it.
        horizon: Seconds ahead a request may be reserved; a longer wait (a pause, a
            full window) is spent in the local queue and asked about again.
        timeout: Seconds to connect to Redis and to await each answer.
        lease: Seconds after which the commitment of a request whose worker never
            settled it (it died) is dropped from the spend check; a settlement that
            comes later is not counted (keep it well above the request timeout).

    Raises:
        ImportError: redis-py is not installed (``pip install 'asyncembed[redis]'``).
        ValueError: ``url`` is not one of those forms (a host, or a socket path, is
            required; the message does not repeat the URL), ``key`` is empty, or a
            number is out of range.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str = "asyncembed",
        horizon: float = 1.0,
        timeout: float = 2.0,
        lease: float = 600.0,
    ) -> None:
        _redis()
        url = check_url(url)
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        for name, value in (("horizon", horizon), ("timeout", timeout), ("lease", lease)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self._url = url
        self.key = key
        self.horizon = horizon
        self.timeout = timeout
        self.lease = lease
        slot = "{" + key + "}"  # one hash slot: a cluster keeps a script's keys together
        self._keys = [
            f"{slot}:{name}" for name in ("req", "tok", "pause", "spend", "leases", "seq")
        ]
        self._links = Links(self._client, _SCRIPTS)

    # -- settings only: pickling and repr ------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self._url,
            "key": self.key,
            "horizon": self.horizon,
            "timeout": self.timeout,
            "lease": self.lease,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        url = state.pop("url")
        self.__init__(url, **state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"RedisLimiter({redact_url(self._url)!r}, key={self.key!r})"

    # -- the Limiter ----------------------------------------------------------------

    async def reserve(self, tokens: int, limits: Limits) -> Reservation:
        """See :meth:`asyncembed.Limiter.reserve`.

        Raises:
            BudgetExceededError: ``max_cost`` leaves no room for this request.
            LimiterUnavailableError: Redis cannot be reached.
        """
        args = (
            tokens,
            limits.requests_per_minute or 0,
            limits.tokens_per_minute or 0,
            self.horizon,
            -1 if limits.max_cost is None else limits.max_cost,
            self.lease,
        )
        asked = time.monotonic()
        reply = await self._call("reserve", self._keys, args)
        # The wait counts from when the script ran, which is close to when it was sent:
        # time spent before this task saw the answer (a busy loop) is already waited.
        late = time.monotonic() - asked
        verdict = reply[0]
        if verdict == "exceeded":
            estimate = float(reply[2])
            raise budget_exceeded(
                float(reply[1]), limits.max_cost or 0.0, estimate if estimate >= 0 else None
            )
        wait, paused = max(0.0, float(reply[1]) - late), max(0.0, float(reply[2]) - late)
        if verdict == "ok":
            lease = reply[4] or None
            return Reservation(
                granted=True, wait=wait, paused=paused, committed=float(reply[3]), lease=lease
            )
        if verdict == "budget":
            return Reservation(granted=False, wait=_POLL, paused=paused, on_release=True)
        # Too far ahead: ask again when the start is about half a horizon away.
        return Reservation(granted=False, wait=max(0.001, wait - self.horizon / 2), paused=paused)

    async def pause_left(self) -> float:
        """See :meth:`asyncembed.Limiter.pause_left` (one call, on Redis's clock).

        Raises:
            LimiterUnavailableError: Redis cannot be reached.
        """
        reply = await self._call("pause_left", self._keys[2:3], ())
        return float(reply[0])

    def pause(self, seconds: float) -> None:
        """See :meth:`asyncembed.Limiter.pause` (sent in the background)."""
        self._spawn("pause", self._keys[2:3], (seconds,))

    def settle(self, reservation: Reservation, *, cost: float | None, tokens: int) -> None:
        """See :meth:`asyncembed.Limiter.settle` (sent in the background)."""
        if reservation.lease is None:
            return  # no spending cap: nothing was committed, nothing to record
        args = (reservation.lease, "" if cost is None else repr(cost), tokens)
        self._spawn("settle", self._keys[3:5], args)

    async def aclose(self) -> None:
        """Send what is being sent, then close the connections of every event loop.

        This loop's are closed here; those of other loops that are running are closed
        on their own loops (waited for up to a few ``timeout``); a loop that is not
        running closes its own when it shuts down. The limiter can be used again.
        """
        await self._links.aclose(timeout=4 * self.timeout)

    # -- Redis ----------------------------------------------------------------------

    def _client(self) -> Redis:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One quick retry (a pooled connection may be stale after a Redis restart);
        # beyond that, failing at once is the policy, not waiting.
        client: Redis = _redis().Redis.from_url(
            self._url,
            decode_responses=True,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),
        )
        return client

    async def _call(
        self, name: str, keys: list[str], args: tuple[Any, ...], link: Link | None = None
    ) -> list[Any]:
        from redis.exceptions import RedisError

        try:
            script = (link or self._links.here()).scripts[name]
            reply: list[Any] = await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailableError(self._describe(exc)) from None
        return reply

    def _describe(self, exc: BaseException) -> str:
        where = redact_url(self._url)
        text = str(exc)
        for secret in secrets_of(self._url):
            text = text.replace(secret, "***")
        return f"the shared limiter at {where} is unavailable: {type(exc).__name__}: {text}"

    def _spawn(self, name: str, keys: list[str], args: tuple[Any, ...]) -> None:
        async def send(link: Link) -> None:
            try:
                await self._call(name, keys, args, link)
            except LimiterUnavailableError as exc:
                # Nothing to fail: the request is over. A lost pause still holds this
                # process (the Scheduler's own copy); a lost settlement's lease expires.
                logger.warning("%s (%s not recorded)", exc, name)

        self._links.here().spawn(send)
