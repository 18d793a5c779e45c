"""Process settings: one frozen Struct, read from ``STEPLOG_*`` once.

Only `Settings.from_env` looks at the environment, and only at the mapping it is
given; everything else receives a `Settings` (tests build one directly).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from engine.adapters.outbound import OutboundPolicy, parse_allow
from engine.core.arns import DEFAULT_ACCOUNT, DEFAULT_PARTITION, DEFAULT_REGION, ArnScope
from engine.limits import LimitDefaults, parse_rates
from engine.loops.http_task import Connection, parse_connections
from engine.webhooks import DeliveryPolicy, SubscriptionPolicy

ALL_ROLES: tuple[str, ...] = ("api", "engine", "worker", "projector", "webhooks")
LOG_FORMATS: tuple[str, ...] = ("text", "json")
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Fields whose values are secrets (never shown by Settings' repr).
_SECRET_FIELDS = frozenset({"metrics_token", "http_connections"})
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)[^@]*@", re.IGNORECASE)


def _without_password(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", url)


_PARTITION = re.compile(r"[a-z][a-z0-9-]{0,31}")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_ACCOUNT = re.compile(r"[0-9]{12}")
TRACE_EXPORTERS: tuple[str, ...] = ("otlp", "console", "none")
OTLP_PROTOCOLS: tuple[str, ...] = ("http/protobuf", "grpc")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a steplog process is configured with.

    ``database_url`` / ``redis_url`` of None mean "start embedded servers under
    ``data_dir``" (see steplog.embedded).
    """

    database_url: str | None = None
    redis_url: str | None = None
    # redis_url names one node of a Redis Cluster: the client finds the other nodes and
    # follows the slots (docs/redis-cluster.md). Needs redis_url.
    redis_cluster: bool = False
    data_dir: Path = Path(".steplog")
    host: str = "127.0.0.1"
    port: int = 8080
    roles: tuple[str, ...] = ALL_ROLES
    partitions: int = 4
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    max_payload_bytes: int = 262_144
    # The largest definition registered (Step Functions' quota: 1 MiB).
    max_definition_bytes: int = 1_048_576
    # A task left unacknowledged this long by a worker that died (or an activity task
    # whose poller never reported nor heartbeated, docs/tasks.md) is delivered again.
    task_visibility_timeout_s: float = 30.0
    # A trigger or task delivered more often than this is dead-lettered (a task's
    # attempt then fails with Steplog.TaskDeliveryExceeded); activity tasks too.
    max_deliveries: int = 10
    # The engine's cache of execution states, in MiB of their JSON (engine_loop.StateCache):
    # a state not cached is replayed from its events at its next decision.
    state_cache_mb: float = 64.0
    # SIGTERM: running task handlers get this long to finish before they are cancelled.
    shutdown_grace_s: float = 10.0
    # Extra task handlers: "module:attribute" (a HandlerRegistry or a callable taking
    # one), "module" alone meaning "module:register"; besides the entry points.
    handlers: tuple[str, ...] = ()
    # HTTP tasks (arn:aws:states:::http:invoke, engine/loops/http_task.py): named
    # connections holding the secrets a definition references by name in
    # Authentication.ConnectionArn, as a JSON object {name: {"Headers": {...},
    # "QueryParameters": {...}, "Basic": {"Username": ..., "Password": ...}}}. Never logged.
    http_connections: str = ""
    namespace: str = "default"
    # Where $$.StateMachine.Id, $$.Execution.Id and $$.Execution.RoleArn say steplog
    # runs, in AWS's ARN form (engine/core/arns.py):
    # arn:<arn_partition>:states:<arn_region>:<account>:execution:<workflow>:<name>, where
    # <account> is arn_account for the namespace "default" and arn_account-<namespace>
    # for any other. The defaults are LocalStack's. Recorded per execution at its start:
    # changing them changes new executions only.
    arn_partition: str = DEFAULT_PARTITION
    arn_region: str = DEFAULT_REGION
    arn_account: str = DEFAULT_ACCOUNT
    redis_prefix: str = "steplog"
    # HTTP server limits (api/server.py, api/hygiene.py). Open connections beyond
    # http_max_connections get a 503 and are closed.
    http_max_connections: int = 1000
    # A request's headers must arrive within this of its first byte; its body within
    # http_body_timeout_s (408); an idle keep-alive connection closes after the last.
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    http_keepalive_timeout_s: float = 15.0
    # The request line and each header field at most this many bytes; at most
    # http_max_headers header fields (400 line_too_long / bad_http_request beyond).
    http_max_line_bytes: int = 8190
    http_max_headers: int = 100
    # An API request whose handler (after its body arrived) has not answered within this
    # is cancelled and answered 503 service_unavailable with Retry-After (api/deadline.py);
    # a streaming response (the SSE feed, history.jsonl) is bounded until it starts.
    # A start cut short after its commit is answered 503 too: the client retries it
    # with the same execution name and gets the execution it started (docs/api.md).
    request_timeout_s: float = 10.0
    # PostgreSQL statement timeouts (engine/adapters/postgres.py), in milliseconds, waits
    # for locks included; 0 turns one off. api_statement_timeout_ms bounds the API's
    # statements (a request answers 503 instead of hanging), statement_timeout_ms those of
    # the loops (engine, worker, projector) and of the CLI; migrations have none.
    api_statement_timeout_ms: int = 5000
    statement_timeout_ms: int = 30000
    # A Redis command with no answer within this (e.g. a paused or hung server) fails as
    # unavailable and its connection is dropped; also the connect timeout. Above the
    # 1 s the consumers block in XREADGROUP.
    redis_timeout_s: float = 10.0
    # Origins allowed to call the API from a browser (comma separated, "*" for any);
    # empty, the default, turns CORS off.
    cors_allow_origins: tuple[str, ...] = ()
    # aiomonitor on 127.0.0.1 (loopback only): its terminal on monitor_port, its web UI
    # on monitor_port + 1; 0, the default, turns it off (`make run` turns it on).
    monitor_port: int = 0
    # A metrics-only HTTP listener (GET /metrics) on host:metrics_port for a process
    # without the api role; 0, the default, turns it off.
    metrics_port: int = 0
    # API keys (api/auth.py). STEPLOG_AUTH=off makes every request the anonymous admin of
    # `namespace`; it is refused unless the API listens on a loopback address.
    auth: bool = True
    # The bearer token /metrics needs; unset, /metrics is served to loopback clients only.
    metrics_token: str | None = None
    # Rate limits (engine/limits.py, docs/api.md "Rate limits"): per budget (starts,
    # writes, reads) "BUDGET=RATE/BURST", RATE tokens per second refilling a bucket of
    # BURST. rate_limits: each namespace's bucket, shared by all its callers and all API
    # processes; key_rate_limits: each API key's own bucket inside it. Overridden per
    # namespace in PostgreSQL (`steplog limits set`); processes re-read the overrides
    # after limits_cache_s seconds.
    rate_limits: str = "starts=500/1000,writes=1000/2000,reads=5000/10000"
    key_rate_limits: str = "starts=250/500,writes=500/1000,reads=2500/5000"
    limits_cache_s: float = 5.0
    # How long an API process remembers an API key it read (engine/access.py): only while
    # it listens for revocations, which make every process forget the key at once.
    # 0: every request reads its key from PostgreSQL.
    key_cache_s: float = 10.0
    # At most this many RUNNING executions per namespace (a start beyond is 429
    # running_quota_exceeded); 0: no quota. Overridden per namespace like the rates.
    running_quota: int = 0
    # OpenTelemetry tracing (steplog/tracing.py), read from the standard variables, not
    # STEPLOG_*: OTEL_TRACES_EXPORTER ("otlp", "console", comma separated; unset or "none"
    # is off, the default; OTEL_SDK_DISABLED=true forces off) and the OTLP protocol
    # (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL). The SDK
    # reads the other OTEL_* variables itself (endpoint, sampler, service name, ...).
    otel_traces_exporter: tuple[str, ...] = ()
    otel_exporter_otlp_protocol: str = "http/protobuf"
    # With tracing on, also span every PostgreSQL query and Redis command (the asyncpg and
    # redis instrumentations): detailed, but it costs far more than steplog's own spans
    # (docs/observability.md), so it is off unless asked for (STEPLOG_TRACE_DRIVERS=true).
    trace_drivers: bool = False
    # OTLP export from the process itself (the span processor's thread encodes and sends)
    # instead of from a child process it starts (steplog/export_process.py), which takes
    # the encoding and the requests off this process's GIL (STEPLOG_TRACE_EXPORT_IN_PROCESS).
    trace_export_in_process: bool = False
    # Outbound HTTP (webhooks, HTTP tasks; engine/adapters/outbound.py): connect and total
    # timeouts, the most of a response body read, and the allow-list of the address
    # guard. By default no call reaches a loopback, private, link-local, unique-local,
    # multicast or metadata address; STEPLOG_OUTBOUND_ALLOW lets CIDRs and host names
    # through (comma separated, e.g. "127.0.0.1/32,::1/128,localhost", which `make run`
    # sets). Metadata addresses (169.254.169.254, ...) are refused whatever it says.
    outbound_allow: str = ""
    outbound_connect_timeout_s: float = 5.0
    outbound_timeout_s: float = 15.0
    outbound_max_response_bytes: int = 1_048_576
    # Webhooks (the webhooks role, docs/webhooks.md): a failed delivery is retried after
    # webhook_retry_base_s, doubling up to webhook_retry_max_s (each jittered), until
    # webhook_retry_horizon_s after its first attempt, then dead-lettered; a subscription
    # failing for longer than webhook_pause_after_s (no success in between) is paused.
    # webhook_concurrency: deliveries in flight per process; webhook_poll_s: how often it
    # looks for work besides the append doorbell.
    # webhook_secret_overlap_s: after a secret rotation, how long the replaced secret
    # signs alongside the new one; webhook_max_per_namespace: the most subscriptions a
    # namespace may have (a create beyond is 409 webhook_limit_exceeded; 0: no cap).
    webhook_retry_base_s: float = 1.0
    webhook_retry_max_s: float = 600.0
    webhook_retry_horizon_s: float = 259_200.0
    webhook_pause_after_s: float = 432_000.0
    webhook_concurrency: int = 32
    webhook_poll_s: float = 0.5
    webhook_secret_overlap_s: float = 86_400.0
    webhook_max_per_namespace: int = 100
    # Durable time is PostgreSQL's clock (engine/adapters/clock.py): every process reads
    # it every clock_sample_interval_s seconds and counts on with its monotonic clock in
    # between; a process whose wall clock is more than clock_offset_warn_s seconds off
    # logs a warning (steplog_clock_offset_seconds shows the offset).
    clock_sample_interval_s: float = 10.0
    clock_offset_warn_s: float = 1.0

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be >= 1")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in 0..65535")
        if not 0 <= self.monitor_port <= 65534 or not 0 <= self.metrics_port <= 65535:
            raise ValueError("monitor_port must be in 0..65534 and metrics_port in 0..65535")
        unknown = [r for r in self.roles if r not in ALL_ROLES]
        if unknown or not self.roles:
            raise ValueError(f"roles must be a non-empty subset of {ALL_ROLES}, got {self.roles}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}")
        if self.max_definition_bytes < 1:
            raise ValueError("max_definition_bytes must be positive")
        if self.state_cache_mb < 0:
            raise ValueError("state_cache_mb must be >= 0")
        if self.max_payload_bytes < 1 or self.task_visibility_timeout_s <= 0:
            raise ValueError("max_payload_bytes and task_visibility_timeout_s must be positive")
        if self.max_deliveries < 1 or self.shutdown_grace_s < 0:
            raise ValueError("max_deliveries must be positive and shutdown_grace_s not negative")
        if not _PARTITION.fullmatch(self.arn_partition):
            raise ValueError("arn_partition must be lower-case letters, digits and '-' (e.g. aws)")
        if not _REGION.fullmatch(self.arn_region):
            raise ValueError(
                "arn_region must be lower-case letters, digits and '-' (e.g. us-east-1)"
            )
        if not _ACCOUNT.fullmatch(self.arn_account):
            raise ValueError("arn_account must be 12 digits (e.g. 000000000000)")
        if not self.namespace or any(c in self.namespace for c in ": \t\r\n"):
            # The namespace is part of every ARN, whose fields colons separate.
            raise ValueError("namespace must be non-empty without ':' or whitespace")
        if self.http_max_connections < 1 or self.http_max_headers < 1:
            raise ValueError("http_max_connections and http_max_headers must be positive")
        if self.http_max_line_bytes < 1024:
            raise ValueError("http_max_line_bytes must be at least 1024")
        if (
            min(self.http_header_timeout_s, self.http_body_timeout_s, self.http_keepalive_timeout_s)
            <= 0
        ):
            raise ValueError("the http_*_timeout_s settings must be positive")
        if self.request_timeout_s <= 0 or self.redis_timeout_s < 2:
            raise ValueError("request_timeout_s must be positive and redis_timeout_s >= 2")
        if min(self.api_statement_timeout_ms, self.statement_timeout_ms) < 0:
            raise ValueError("the statement timeouts must be >= 0 (0: none)")
        if self.redis_cluster and not self.redis_url:
            raise ValueError("redis_cluster needs redis_url (a node of the cluster)")
        if not self.redis_prefix or any(c in self.redis_prefix for c in "{}: "):
            # The prefix goes inside Redis hash tags; braces or colons would break them.
            raise ValueError("redis_prefix must be non-empty without '{', '}', ':' or spaces")
        if any(e not in TRACE_EXPORTERS for e in self.otel_traces_exporter):
            raise ValueError(f"OTEL_TRACES_EXPORTER: each must be one of {TRACE_EXPORTERS}")
        if self.otel_exporter_otlp_protocol not in OTLP_PROTOCOLS:
            raise ValueError(f"the OTLP protocol must be one of {OTLP_PROTOCOLS}")

        try:
            self.outbound_policy()
        except ValueError as exc:
            raise ValueError(f"outbound settings: {exc}") from None
        self.delivery_policy()
        self.subscription_policy()
        for field in ("rate_limits", "key_rate_limits"):
            try:
                parse_rates(getattr(self, field))
            except ValueError as exc:
                raise ValueError(f"{field}: {exc}") from None
        if self.running_quota < 0 or not 0 < self.limits_cache_s <= 3600:
            raise ValueError("running_quota must be >= 0 and limits_cache_s in (0, 3600]")
        if not 0 <= self.key_cache_s <= 3600:
            raise ValueError("key_cache_s must be in [0, 3600]")
        self.http_task_connections()  # ValueError naming the variable, never a secret
        if not 0 < self.clock_sample_interval_s <= 3600 or self.clock_offset_warn_s <= 0:
            raise ValueError(
                "clock_sample_interval_s must be in (0, 3600] and clock_offset_warn_s positive"
            )

    def __repr__(self) -> str:
        """Every field, with secrets hidden: the metrics token and HTTP connections as
        ``'***'`` when set, and the password of a database or Redis URL. A Settings that
        reaches a log line or a traceback shows no secret."""
        shown = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in _SECRET_FIELDS and value:
                value = "***"
            elif name in ("database_url", "redis_url") and value:
                value = _without_password(value)
            shown.append(f"{name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def limit_defaults(self) -> LimitDefaults:
        """The limits of a namespace without overrides."""
        return LimitDefaults(
            namespace=parse_rates(self.rate_limits),
            key=parse_rates(self.key_rate_limits),
            running_max=self.running_quota,
            cache_s=self.limits_cache_s,
        )

    def outbound_policy(self) -> OutboundPolicy:
        """What every outbound HTTP call is held to (ValueError on a bad allow-list)."""
        networks, hosts = parse_allow(self.outbound_allow)
        return OutboundPolicy(
            connect_timeout_s=self.outbound_connect_timeout_s,
            total_timeout_s=self.outbound_timeout_s,
            max_response_bytes=self.outbound_max_response_bytes,
            allow_networks=networks,
            allow_hosts=hosts,
        )

    def delivery_policy(self) -> DeliveryPolicy:
        """How the webhooks role retries and paces deliveries."""
        return DeliveryPolicy(
            retry_base_s=self.webhook_retry_base_s,
            retry_max_s=self.webhook_retry_max_s,
            retry_horizon_s=self.webhook_retry_horizon_s,
            pause_after_s=self.webhook_pause_after_s,
            concurrency=self.webhook_concurrency,
            poll_s=self.webhook_poll_s,
        )

    def subscription_policy(self) -> SubscriptionPolicy:
        """What webhook subscriptions are held to: the rotation overlap and the cap."""
        return SubscriptionPolicy(
            secret_overlap_s=self.webhook_secret_overlap_s,
            max_per_namespace=self.webhook_max_per_namespace,
        )

    def check_auth(self) -> None:
        """ValueError (one line) when authentication is off on a non-loopback address."""
        if not self.auth and "api" in self.roles and not is_loopback(self.host):
            raise ValueError(
                f"STEPLOG_AUTH=off is allowed only on a loopback address, not {self.host!r}: "
                "turn authentication on or listen on 127.0.0.1"
            )

    def arn_scope(self) -> ArnScope:
        """The partition, region and account of the ARNs this process records."""
        return ArnScope(
            partition=self.arn_partition, region=self.arn_region, account=self.arn_account
        )

    def http_task_connections(self) -> dict[str, Connection]:
        """The named connections of HTTP tasks (ValueError when malformed)."""
        return parse_connections(self.http_connections)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build Settings from ``STEPLOG_<FIELD>`` variables (upper-cased field names).

        Unset or empty variables keep the default. ``STEPLOG_ROLES`` is a comma
        separated list. Raises ValueError naming the variable on a bad value.
        """
        values: dict[str, object] = {}

        def get(field: str) -> str | None:
            raw = environ.get(f"STEPLOG_{field.upper()}")
            return raw.strip() if raw is not None and raw.strip() else None

        for field in (
            "database_url",
            "redis_url",
            "host",
            "namespace",
            "arn_partition",
            "arn_region",
            "arn_account",
            "redis_prefix",
            "metrics_token",
            "rate_limits",
            "key_rate_limits",
            "outbound_allow",
            "http_connections",
        ):
            if (raw := get(field)) is not None:
                values[field] = raw
        if (raw := get("data_dir")) is not None:
            values["data_dir"] = Path(raw)
        if (raw := get("log_format")) is not None:
            values["log_format"] = raw.lower()
        if (raw := get("log_level")) is not None:
            values["log_level"] = raw.upper()
        if (raw := get("roles")) is not None:
            values["roles"] = tuple(r.strip() for r in raw.split(",") if r.strip())
        if (raw := get("handlers")) is not None:
            values["handlers"] = tuple(h.strip() for h in raw.split(",") if h.strip())
        if (raw := get("auth")) is not None:
            if raw.lower() not in ("on", "off"):
                raise ValueError(f"STEPLOG_AUTH: must be on or off, not {raw!r}")
            values["auth"] = raw.lower() == "on"
        if (raw := get("cors_allow_origins")) is not None:
            values["cors_allow_origins"] = tuple(o.strip() for o in raw.split(",") if o.strip())
        for field, kind in (
            ("port", int),
            ("monitor_port", int),
            ("metrics_port", int),
            ("partitions", int),
            ("max_payload_bytes", int),
            ("max_definition_bytes", int),
            ("task_visibility_timeout_s", float),
            ("max_deliveries", int),
            ("state_cache_mb", float),
            ("shutdown_grace_s", float),
            ("http_max_connections", int),
            ("http_header_timeout_s", float),
            ("http_body_timeout_s", float),
            ("http_keepalive_timeout_s", float),
            ("http_max_line_bytes", int),
            ("http_max_headers", int),
            ("request_timeout_s", float),
            ("api_statement_timeout_ms", int),
            ("statement_timeout_ms", int),
            ("redis_timeout_s", float),
            ("limits_cache_s", float),
            ("key_cache_s", float),
            ("running_quota", int),
            ("outbound_connect_timeout_s", float),
            ("outbound_timeout_s", float),
            ("outbound_max_response_bytes", int),
            ("webhook_retry_base_s", float),
            ("webhook_retry_max_s", float),
            ("webhook_retry_horizon_s", float),
            ("webhook_pause_after_s", float),
            ("webhook_concurrency", int),
            ("webhook_poll_s", float),
            ("webhook_secret_overlap_s", float),
            ("webhook_max_per_namespace", int),
            ("clock_sample_interval_s", float),
            ("clock_offset_warn_s", float),
        ):
            if (raw := get(field)) is not None:
                try:
                    values[field] = kind(raw)
                except ValueError:
                    raise ValueError(f"STEPLOG_{field.upper()}: not a number: {raw!r}") from None
        if (raw := get("redis_cluster")) is not None:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"STEPLOG_REDIS_CLUSTER: not true or false: {raw!r}")
            values["redis_cluster"] = raw.lower() in ("true", "1")
        for flag in ("trace_drivers", "trace_export_in_process"):
            if (raw := get(flag)) is not None:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"STEPLOG_{flag.upper()}: not true or false: {raw!r}")
                values[flag] = raw.lower() in ("true", "1")
        values.update(_otel_values(environ))
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"invalid STEPLOG_* settings: {exc}") from None


def _otel_values(environ: Mapping[str, str]) -> dict[str, object]:
    """The tracing fields from the standard OTEL_* variables (see Settings)."""
    values: dict[str, object] = {}
    disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    exporters = environ.get("OTEL_TRACES_EXPORTER", "")
    if disabled:
        values["otel_traces_exporter"] = ()
    elif exporters.strip():
        values["otel_traces_exporter"] = tuple(
            e.strip().lower() for e in exporters.split(",") if e.strip()
        )
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
    )
    if protocol:
        values["otel_exporter_otlp_protocol"] = protocol.lower()
    return values
