"""Node configuration: one dataclass tree, from TOML, then ``MOSAIC_*`` env vars, then CLI flags.

Precedence (lowest to highest): defaults < TOML file < environment < flags.
:func:`NodeConfig.validate` runs at start and raises :class:`ConfigError`
naming the bad key (``net.record_ttl``), so a typo never becomes a traceback
deep inside libp2p.

Environment variables map onto keys with ``__`` between sections:
``MOSAIC_NET__RECORD_TTL=30``, ``MOSAIC_NAME=alice``; ``MOSAIC_DATA_DIR`` sets
the data dir, ``MOSAIC_CACHE_DIR`` the per-user model cache.  Lists are comma separated.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = "~/.mosaic"
CACHE_DIR_ENV = "MOSAIC_CACHE_DIR"


def default_cache_dir(env: typing.Mapping[str, str] | None = None) -> Path:
    """The per-user model cache: ``$MOSAIC_CACHE_DIR``, else the platform's user cache dir.

    One cache per user, not per data dir: converting the embedded model takes
    24-160 s and 517 MB, and every local node (each with its own data dir) shares it.
    """
    env = os.environ if env is None else env
    if env.get(CACHE_DIR_ENV):
        return Path(env[CACHE_DIR_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mosaic"))


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range; names the key."""


LOOPBACK_LISTEN = "/ip4/127.0.0.1/tcp/4001"
PUBLIC_LISTEN = "/ip4/0.0.0.0/tcp/4001"  # `start --public`: every interface


@dataclass
class RelayLimitsConfig:
    """What a relay (``net.relay_service``) grants; node/net/relay_service.py enforces it."""

    max_reservations: int = 128
    reservations_per_ip: int = 4
    reservation_ttl: int = 3600
    circuit_duration: int = 120  # seconds one relayed connection may live
    circuit_bytes: int = 16 * 1024 * 1024  # bytes one relayed connection may carry, both ways
    circuits_per_peer: int = 8  # concurrent circuits to or from one peer
    circuits_per_ip: int = 16  # concurrent circuits opened from one IP
    circuit_rate_per_ip: int = 60  # new circuits per minute from one IP


@dataclass
class NetConfig:
    # Loopback until the operator opts in (`start --public` or `--listen`): a newcomer's first
    # node should not be open to every network the machine is on.
    listen: list[str] = field(default_factory=lambda: [LOOPBACK_LISTEN])
    bootstrap: list[str] = field(default_factory=list)
    mdns: bool = False
    # Seconds a capability record stays valid; re-announced well before it lapses.
    record_ttl: float = 300.0
    # Seconds between gossip re-announcements (gossip is lossy: B3); 0 disables them.
    announce_interval: float = 60.0
    # Seconds between DHT re-puts of our own record (the DHT is the source of truth).
    dht_republish_interval: float = 120.0
    # Seconds between sweeps of the DHT for records gossip may have missed; 0 disables.
    dht_sync_interval: float = 30.0
    # Seconds between DHT routing-table refreshes (connections do not fill it: B5).  A refresh
    # walks the DHT (~1.4 s of CPU per node at N=25, research/libp2p.md), so not too often;
    # go-libp2p refreshes every 10 min.
    routing_refresh_interval: float = 600.0
    # Extra multiaddrs to put in our record (e.g. a public address behind NAT).
    announce_addrs: list[str] = field(default_factory=list)
    # A private swarm: the peer ids allowed to connect, open streams and be listed (this node
    # is always allowed).  Empty: an open swarm, anyone may join (docs/security.md).
    trusted_peers: list[str] = field(default_factory=list)
    # NAT traversal (issue 20, docs/operators.md).  auto: AutoNAT asks peers to dial us back.
    reachability: str = "auto"
    autonat_confirmations: int = 3  # servers that must agree (fewer when fewer answered)
    autonat_interval: float = 300.0
    # Offer the Circuit Relay v2 service to nodes behind NAT (a public node only).
    relay_service: bool = False
    relay_limits: RelayLimitsConfig = field(default_factory=RelayLimitsConfig)
    # Reservations an unreachable node holds (on bootstrap peers / peers offering the service).
    relay_reservations: int = 2
    relay_check_interval: float = 10.0
    # DCUtR: upgrade relayed connections to direct ones (hole punching) when the NATs allow.
    holepunch: bool = True
    # Weight/block transfers over a relayed connection are refused past this many MiB per peer.
    relay_transfer_cap_mib: float = 8.0


@dataclass
class ExpertConfig:
    enabled: bool = True
    model: str | None = None  # None: the catalog default (Qwen2.5-Coder-1.5B; $MOSAIC_DEFAULT_MODEL)
    adapters: dict[str, str] = field(default_factory=dict)  # NAME -> path or CID
    device: str = "auto"
    # Which engine runs the model (node/expert/serve/engine.py): auto = llama.cpp for a GGUF base
    # on a CPU (the catalog models: no fp32 conversion, 5-9x faster decode), torch otherwise
    # (HF directories, GPUs, or llama-cpp-python missing).
    engine: str = "auto"
    max_batch: int = 8
    queue_size: int = 64
    max_new_tokens_cap: int = 1024
    # torch intra-op threads for the inference worker; 0 = automatic: the free physical cores
    # (node/expert/serve/threads.py).  torch's own default (every logical core) ran 25-30x slower
    # while another process held a core.
    threads: int = 0
    # Generation sessions (token-level fusion): each holds a KV cache of up to session_max_tokens.
    max_sessions: int = 16
    max_sessions_per_peer: int = 4
    session_idle_s: float = 60.0
    session_max_tokens: int = 2048
    # Self-evaluation at start: task names (files in tasks_dir, default $MOSAIC_TASKS_DIR or
    # ../shared/data/tasks) scored on their first self_eval_limit dev items; the scores go
    # into the signed capability record (node/expert/serve/self_eval.py).
    self_eval: list[str] = field(default_factory=list)
    self_eval_limit: int = 20
    tasks_dir: str | None = None


@dataclass
class HttpConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    token: str | None = None
    # Where `node eval` writes reports: the dashboard shows the newest one's plots.
    report_dir: str | None = None


@dataclass
class StorageConfig:
    ipfs_api: str | None = None
    # Cap on block uploads to other peers, MiB/s for the whole node (None: no cap).
    upload_limit_mib: float | None = None
    # Quotas on fetched content (node/storage/quota.py): what one fetch may declare, and what remote
    # peers may make this node fetch per hour, each peer and all of them together (issue 22).
    max_fetch_mib: float = 64 * 1024
    peer_quota_mib: float = 1024
    others_quota_mib: float = 8 * 1024
    # Content over 256 MiB may declare at most this many times the bytes of its distinct blocks.
    max_expansion: float = 16.0


@dataclass
class NodeConfig:
    data_dir: str = DEFAULT_DATA_DIR
    # Converted models, shared by all local nodes (None: default_cache_dir()).
    cache_dir: str | None = None
    name: str = "mosaic-node"
    description: str = ""
    tags: list[str] = field(default_factory=list)
    log_level: str = "info"
    net: NetConfig = field(default_factory=NetConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def validate(self) -> NodeConfig:
        """Check every field's type and range; raise :class:`ConfigError` naming the key."""
        _check_types(self, "")
        if not 1 <= len(self.name) <= 64:
            raise ConfigError("name: must be 1-64 characters")
        if len(self.description) > 1024:
            raise ConfigError("description: at most 1024 characters")
        if len(self.tags) > 32 or any(not 1 <= len(t) <= 32 for t in self.tags):
            raise ConfigError("tags: at most 32 tags of 1-32 characters each")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level: one of debug, info, warning, error")
        net = self.net
        if not net.listen:
            raise ConfigError("net.listen: at least one multiaddr is required")
        from multiaddr import Multiaddr  # light: no libp2p host import

        for key in ("listen", "bootstrap", "announce_addrs"):
            for addr in getattr(net, key):
                try:
                    Multiaddr(addr)
                except Exception as exc:  # multiaddr raises several types
                    raise ConfigError(f"net.{key}: {addr!r} is not a multiaddr ({exc})") from None
                if key == "bootstrap" and "/p2p/" not in addr:
                    raise ConfigError(f"net.bootstrap: {addr!r} must end with /p2p/<peer id>")
        from protocol.records import MAX_RECORD_TTL

        if not 0 < net.record_ttl <= MAX_RECORD_TTL:
            raise ConfigError(
                f"net.record_ttl: must be in (0, {MAX_RECORD_TTL:g}] seconds (peers keep no record longer)"
            )
        for key in ("announce_interval", "dht_republish_interval", "dht_sync_interval", "routing_refresh_interval"):
            if getattr(net, key) < 0:
                raise ConfigError(f"net.{key}: must be >= 0 seconds (0 disables)")
        if net.reachability not in ("auto", "public", "private"):
            raise ConfigError("net.reachability: one of auto, public, private")
        if net.autonat_confirmations < 1 or net.relay_reservations < 0:
            raise ConfigError("net.autonat_confirmations must be >= 1 and net.relay_reservations >= 0")
        if net.autonat_interval <= 0 or net.relay_check_interval <= 0 or net.relay_transfer_cap_mib < 0:
            raise ConfigError("net.autonat_interval and net.relay_check_interval must be > 0, "
                              "net.relay_transfer_cap_mib >= 0")
        for key, value in dataclasses.asdict(net.relay_limits).items():
            if value <= 0:
                raise ConfigError(f"net.relay_limits.{key}: must be > 0")
        from protocol.identity import public_key_from_peer_id

        for peer_id in net.trusted_peers:
            try:
                public_key_from_peer_id(peer_id)
            except Exception:  # a malformed id raises several types
                raise ConfigError(f"net.trusted_peers: {peer_id!r} is not an Ed25519 peer id (12D3KooW...)") from None
        ex = self.expert
        for key in ("max_batch", "queue_size", "max_new_tokens_cap", "max_sessions", "max_sessions_per_peer",
                    "session_max_tokens", "self_eval_limit"):
            if getattr(ex, key) < 1:
                raise ConfigError(f"expert.{key}: must be >= 1")
        if not 0 < ex.session_idle_s <= 3600:
            raise ConfigError("expert.session_idle_s: must be in (0, 3600] seconds")
        if ex.engine not in ("auto", "llama.cpp", "torch"):
            raise ConfigError(f"expert.engine: {ex.engine!r} is not one of auto, llama.cpp, torch")
        if ex.threads < 0:
            raise ConfigError("expert.threads: must be >= 0 (0: choose from the free cores)")
        if len(ex.self_eval) > 8:
            raise ConfigError("expert.self_eval: at most 8 tasks (the record holds 16 scores)")
        host, _, port = self.http.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"http.listen: {self.http.listen!r} is not HOST:PORT")
        limit = self.storage.upload_limit_mib
        # Below 1 MiB/s one 16 MiB block request would outlast the server's request deadline.
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 1):
            raise ConfigError("storage.upload_limit_mib: must be >= 1 (MiB/s), or unset for no cap")
        for key in ("max_fetch_mib", "peer_quota_mib", "others_quota_mib", "max_expansion"):
            value = getattr(self.storage, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 2**30:
                raise ConfigError(f"storage.{key}: must be a size in MiB, > 0")
        return self


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: typing.Mapping[str, str] | None = None
) -> NodeConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``MOSAIC_*`` variables."""
    config = NodeConfig()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory; pass the TOML file itself") from None
        except PermissionError:
            raise ConfigError(f"config file {path} cannot be read (permission denied)") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 TOML: {exc.reason}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        apply_mapping(config, data)
    apply_env(config, os.environ if env is None else env)
    return config


def apply_mapping(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Merge a nested dict (parsed TOML) into the dataclass ``obj``; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        name = key.replace("-", "_")
        dotted = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(f"{dotted}: unknown setting")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: must be a table")
            apply_mapping(current, value, prefix=f"{dotted}.")
        else:
            setattr(obj, name, _coerce(value, _field_type(obj, name), dotted))


def apply_env(config: NodeConfig, env: typing.Mapping[str, str]) -> None:
    for var, raw in env.items():
        if not var.startswith("MOSAIC_"):
            continue
        path = var[len("MOSAIC_") :].lower().split("__")
        obj: Any = config
        for part in path[:-1]:
            if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
                obj = None
                break
            obj = getattr(obj, part)
        leaf = path[-1]
        if obj is None or not dataclasses.is_dataclass(obj) or leaf not in {f.name for f in dataclasses.fields(obj)}:
            continue  # other MOSAIC_* variables (e.g. test switches) are not config keys
        if dataclasses.is_dataclass(getattr(obj, leaf)):
            continue
        setattr(obj, leaf, _parse_text(raw, _field_type(obj, leaf), ".".join(path)))


def _field_type(obj: Any, name: str) -> Any:
    return typing.get_type_hints(type(obj))[name]


def _parse_text(raw: str, hint: Any, key: str) -> Any:
    """Parse an environment string into the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if type(None) in args:
        if raw.lower() in ("", "none", "null"):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: {raw!r} is not a boolean")
    if origin is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if origin is dict:
        out: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise ConfigError(f"{key}: {part!r} is not NAME=VALUE")
            out[name.strip()] = value.strip()
        return out
    return _coerce(raw, hint, key)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
        elif hint is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                return float(value)
        elif hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str):
                return int(value)
        elif hint is str:
            if isinstance(value, str):
                return value
        elif origin is list:
            if isinstance(value, str):
                value = [value]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
        elif origin is dict:
            if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
                return {str(k): v for k, v in value.items()}
    except ValueError:
        pass
    raise ConfigError(f"{key}: {value!r} is not a valid {getattr(hint, '__name__', hint)}")


def _check_types(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_types(value, f"{prefix}{f.name}.")
        else:
            setattr(obj, f.name, _coerce(value, _field_type(obj, f.name), f"{prefix}{f.name}"))
