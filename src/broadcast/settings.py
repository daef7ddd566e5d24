"""Configuration: environment variables with the ``BROADCAST_`` prefix, validated once at startup.

Every setting is documented in ``docs/configuration.md``; a bad value stops the process with a
message that names the variable, the value and what was expected (see ``load_settings``).
"""

from __future__ import annotations

import os
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broadcast.channels import parse_pattern

SUPPORTED_BROKER_SCHEMES = ("memory", "redis", "rediss", "unix")
SECRET_SETTINGS = frozenset({"publish_token", "jwt_secret"})


class Settings(BaseSettings):
    """All runtime settings: keyword arguments in tests, the environment otherwise."""

    model_config = SettingsConfigDict(env_prefix="BROADCAST_", extra="forbid", frozen=True)

    broker_url: str = "memory://"
    """Where events cross processes: ``memory://`` keeps everything in this process;
    ``redis://host:port/db`` (or ``rediss://``, ``unix://``) shares them between every worker and
    node using the same Redis."""

    history_size: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    """Published events kept per channel for clients that reconnect (``Last-Event-ID``)."""

    history_seconds: Annotated[float, Field(gt=0, le=86_400 * 7)] = 300.0
    """How long a published event is kept for clients that reconnect."""

    history_bytes: Annotated[int, Field(ge=1024, le=2**40)] = 16 * 1024 * 1024
    """Bytes of published events (their JSON) kept per channel for clients that reconnect; the
    oldest go first."""

    presence_ttl_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """How long a node's share of the count outlives its last heartbeat (Redis only)."""

    presence_heartbeat_seconds: Annotated[float, Field(gt=0, le=600)] = 2.0
    """How often a node refreshes its share and re-reads the others' (Redis only)."""

    redis_reconnect_max_seconds: Annotated[float, Field(gt=0, le=600)] = 5.0
    """Longest wait between two attempts to reach Redis again (capped exponential backoff)."""

    socketio_transports: Annotated[tuple[str, ...], NoDecode] = ("polling", "websocket")
    """Socket.IO transports accepted (``websocket`` alone needs no sticky sessions)."""

    socketio_ping_interval_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 25_000
    """How often Socket.IO clients are pinged (Engine.IO ``pingInterval``; python-socketio's
    default)."""

    socketio_ping_timeout_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 20_000
    """How long a Socket.IO client may take to answer a ping before its session is closed
    (Engine.IO ``pingTimeout``)."""

    socketio_connect_timeout_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 45_000
    """An Engine.IO session that sends no Socket.IO CONNECT within this time is closed
    (Socket.IO's ``connectTimeout``)."""

    socketio_recovery: bool = False
    """Socket.IO connection state recovery, as Node's ``connectionStateRecovery``: a client whose
    link died comes back with its ``sid``, identity, channels and missed events. Off by default:
    with it on, every event with an id carries one more, last, argument (its offset), which
    breaks python-socketio handlers that take a fixed number of parameters."""

    socketio_recovery_max_disconnection_ms: Annotated[int, Field(ge=1000, le=3_600_000)] = 120_000
    """How long a Socket.IO session is kept for its client to recover it (Node's
    ``maxDisconnectionDuration`` and its default, 2 minutes)."""

    count_conflation_ms: Annotated[int, Field(ge=0, le=10_000)] = 50
    """Window merging further ``user count`` changes into one emit (0: emit every change)."""

    count_max_frames_per_second: Annotated[int, Field(ge=0, le=100_000_000)] = 5_000
    """Under a storm, widen the conflation window so that ``user count`` costs at most this
    many frames per second over all of this node's clients (0: never widen)."""

    sse_ping_seconds: Annotated[float, Field(gt=0, le=3600)] = 15.0
    """Interval of SSE keep-alive comments, which also reveal clients that vanished silently."""

    send_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """A write to a client (SSE or websocket) that takes longer (it stopped reading: its TCP
    buffers are full) disconnects it."""

    sse_retry_ms: Annotated[int, Field(ge=0, le=600_000)] = 2000
    """Reconnection delay suggested to EventSource clients with the ``retry:`` field."""

    subscriber_backlog: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    """Events queued for one SSE client before it is disconnected as too slow."""

    client_buffer_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024 * 1024)] = 1024 * 1024
    """Bytes queued for one client (either transport) before it is disconnected as too slow
    (Centrifugo's default, 1 MiB). One event larger than this still goes to a client that has
    nothing else queued."""

    max_frame_bytes: Annotated[int, Field(ge=1024, le=100 * 1024 * 1024)] = 1_000_000
    """Largest Socket.IO message a client may send (a websocket frame or a polling body); a
    client that sends more is disconnected."""

    max_connections_per_address: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    """Connections one client address may hold over both transports (0: no limit)."""

    chat_max_length: Annotated[int, Field(ge=1, le=100_000)] = 1000
    """Longest chat message accepted, in characters."""

    chat_rate_per_second: Annotated[float, Field(gt=0, le=10_000)] = 5.0
    """Chat messages one connection may send per second, on average."""

    chat_burst: Annotated[int, Field(ge=1, le=10_000)] = 10
    """Chat messages one connection may send at once before the rate applies."""

    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    """Other origins allowed to use Socket.IO and SSE (comma-separated, or ``*``); none by default:
    same origin only."""

    publish_token: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    """Bearer tokens accepted by ``POST /publish`` (comma-separated, to rotate); when none is
    set, one is generated at startup and logged once."""

    publish_max_bytes: Annotated[int, Field(ge=256, le=16 * 1024 * 1024)] = 64 * 1024
    """Largest publish request body, in bytes (413 beyond)."""

    publish_rate_per_second: Annotated[float, Field(gt=0, le=1_000_000)] = 200.0
    """Publish requests one token may make per second, on average (429 beyond)."""

    publish_burst: Annotated[int, Field(ge=1, le=1_000_000)] = 400
    """Publish requests one token may make at once before the rate applies."""

    private_channels: Annotated[tuple[str, ...], NoDecode] = ("private:*",)
    """Channels a client may subscribe to only when its token grants them (claim ``channels``):
    glob patterns, comma-separated; empty: no private channels."""

    max_channels_per_connection: Annotated[int, Field(ge=1, le=100_000)] = 100
    """Channels one connection may subscribe to at once."""

    jwt_secret: SecretStr | None = None
    """When set, clients may prove who they are with an HS256 JWT (``sub`` is the username)."""

    identity_required: bool = False
    """With a JWT secret: refuse clients without a valid token."""

    log_format: Literal["json", "text"] = "json"
    """Logs as one JSON object per line, or as plain text."""

    overrides: bool = True
    """Lean on hypercorn's and sse-starlette's internals, and python-socketio's client manager,
    for speed (``overrides/``); false takes their public paths: the same behaviour, slower."""

    log_level: Annotated[str, Field(pattern=r"(?i)^(debug|info|warning|error|critical)$")] = "info"

    @field_validator(
        "cors_origins", "publish_token", "socketio_transports", "private_channels", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("publish_token")
    @classmethod
    def _long_enough(cls, tokens: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(token.get_secret_value()) < 16 for token in tokens):
            raise ValueError("every publish token must be at least 16 characters")
        return tokens

    @field_validator("socketio_transports")
    @classmethod
    def _known_transports(cls, transports: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(transports) - {"polling", "websocket"}
        if unknown or not transports:
            raise ValueError("use polling, websocket, or both (comma-separated)")
        return transports

    @field_validator("private_channels")
    @classmethod
    def _valid_patterns(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            parse_pattern(pattern)  # its Refused is a ValueError: named in the message
        return patterns

    @field_validator("presence_heartbeat_seconds")
    @classmethod
    def _heartbeat_within_ttl(cls, heartbeat: float, info: ValidationInfo) -> float:
        ttl = info.data.get("presence_ttl_seconds")
        if ttl is not None and heartbeat >= ttl:
            raise ValueError(f"must be shorter than BROADCAST_PRESENCE_TTL_SECONDS ({ttl})")
        return heartbeat

    @field_validator("jwt_secret")
    @classmethod
    def _strong_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        # RFC 7518: an HS256 key shorter than the hash (32 bytes) weakens it.
        if secret is not None and len(secret.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (RFC 7518 for HS256)")
        return secret

    @field_validator("identity_required")
    @classmethod
    def _needs_secret(cls, required: bool, info: ValidationInfo) -> bool:
        if required and info.data.get("jwt_secret") is None:
            raise ValueError("requires BROADCAST_JWT_SECRET")
        return required

    @field_validator("cors_origins")
    @classmethod
    def _valid_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if origin == "*":
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ValueError(
                    f"{origin!r} is not an origin: use scheme://host[:port], comma-separated, or *"
                )
        return origins

    @field_validator("broker_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in SUPPORTED_BROKER_SCHEMES:
            supported = ", ".join(f"{name}://" for name in SUPPORTED_BROKER_SCHEMES)
            raise ValueError(f"unsupported broker scheme {scheme!r}; supported: {supported}")
        return value


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


class ConfigError(Exception):
    """A setting has a bad value; ``str()`` is a message meant for the operator."""


def load_settings() -> Settings:
    """Read and validate the environment, turning pydantic's error into one readable message."""
    prefix = "BROADCAST_"
    known = {prefix + name.upper() for name in Settings.model_fields}
    unknown = sorted(key for key in os.environ if key.startswith(prefix) and key not in known)
    if unknown:
        # A typo would otherwise be silently ignored and the default used instead.
        raise ConfigError(
            f"unknown setting(s): {', '.join(unknown)}; known settings: {', '.join(sorted(known))}"
        )
    try:
        return Settings()
    except ValidationError as exc:
        lines = ["invalid configuration:"]
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            variable = f"BROADCAST_{field.upper()}"
            # Never echo a secret, even a malformed one.
            value = error.get("input")
            if field in SECRET_SETTINGS:
                shown = "(hidden)"
            elif field == "broker_url" and isinstance(value, str):
                shown = repr(redact_url(value))
            else:
                shown = repr(value)
            lines.append(f"  {variable}={shown}: {error['msg']}")
        raise ConfigError("\n".join(lines)) from None
