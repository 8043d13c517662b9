"""Answers in a Redis database: shared by runs on several hosts.

``redis://[:PASSWORD@]HOST:PORT/DB[?prefix=TEXT]`` (or ``rediss://`` for TLS);
other query options (``socket_timeout=...``) go to redis-py unchanged. A read
is one MGET, a write one pipeline of SET NX: a value already there is never
replaced, so runs writing the same answers at once lose nothing.
"""
from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.answer_store.base import AnswerStore

_CONNECT_TIMEOUT_S = 3.0
_TIMEOUT_S = 60.0


def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _redacted(parts) -> str:
    """The URL with its password hidden, for messages and logs."""
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        netloc = f"{user}:***@{netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore(AnswerStore):
    """A Redis database (optionally a key prefix within it) holding the answers."""

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as e:
            raise ValueError(f"{url!r}: not a Redis URL ({_line(e)})") from None
        self.url = _redacted(parts)
        query = parse_qsl(parts.query, keep_blank_values=True)
        self.prefix = "".join(v for k, v in query if k == "prefix").encode("utf-8")
        db_text = dict(query).get("db") or parts.path.strip("/") or "0"  # redis-py: ?db= wins over the path
        if not db_text.isdigit():
            raise ValueError(f"{self.url}: the database must be a number like /0, not {db_text!r}")
        self.db = int(db_text)
        plain = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "prefix"])))
        try:
            self._client = redis.Redis.from_url(
                plain, socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_timeout=_TIMEOUT_S,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 2))
            self._client.ping()
        except (redis.RedisError, OSError, ValueError, TypeError) as e:
            raise ValueError(f"{self.url}: cannot use this Redis server ({_line(e)})") from None

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        return cls(url)

    def _fail(self, e: BaseException) -> ConnectionError:
        return ConnectionError(f"{self.url}: {_line(e)}")

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            return self._client.mget([self.prefix + k for k in keys])
        except redis.RedisError as e:
            raise self._fail(e) from None

    def put_many(self, items: list[tuple[bytes, bytes]]) -> list[bool]:
        if not items:
            return []
        try:
            pipe = self._client.pipeline(transaction=False)
            for k, v in items:
                pipe.set(self.prefix + k, v, nx=True)
            return [r is True for r in pipe.execute()]
        except redis.RedisError as e:
            raise self._fail(e) from None

    def close(self) -> None:
        self._client.close()

    def describe(self) -> str:
        try:
            version = self._client.info("server").get("redis_version", "?")
            size = self._client.dbsize()
        except redis.RedisError as e:
            raise self._fail(e) from None
        prefix = f", prefix {self.prefix.decode('utf-8')!r}" if self.prefix else ""
        return f"{self.url} (Redis {version}: {size} keys in db {self.db}{prefix})"
