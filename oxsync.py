#!/usr/bin/env python3
"""oxsync: a self-hosted Cloud Sync server for OxideTerm.

OxideTerm's Cloud Sync client (backend "HTTP JSON") uploads a user's
connections, forwards and settings; oxsync stores them, keeps two devices from
overwriting each other (ETag compare-and-swap), seals payloads at rest, scopes
API tokens to namespaces and serves a small admin page.

One module, standard library first, read top to bottom:

    1. Configuration   flags, environment, .env
    2. Names           namespaces, object paths, token patterns, entity tags
    3. Crypto          ChaCha20-Poly1305 sealing of payloads at rest
    4. Storage         SQLite schema, migrations, transactions, records
    5. Auth            API tokens on the sync API
    6. HTTP            threaded server, request framing, responses
    7. Sync API        metadata, blob, objects, health
    8. Admin API       sessions, users, tokens, namespaces
    9. CLI             serve and the operator commands

The wire contract is PROTOCOL.md. Licensed under the GNU AGPL v3.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import collections
import contextlib
import dataclasses
import email.utils
import fcntl
import functools
import getpass
import hashlib
import hmac
import http
import http.cookies
import http.server
import itertools
import json
import logging
import logging.handlers
import mmap
import os
import queue
import re
import secrets
import shutil
import signal
import site
import socket
import sqlite3
import ssl
import sys
import threading
import time
import unicodedata
import urllib.parse
import uuid
from datetime import datetime, timezone
from http import HTTPStatus

VERSION = "0.1.0"
SERVICE_NAME = "oxideterm-cloud-sync-server"
MiB = 1024 * 1024

log = logging.getLogger("oxsync")
access_log = logging.getLogger("oxsync.access")
audit_log = logging.getLogger("oxsync.audit")


class ConfigError(Exception):
    """A bad setting or argument; the CLI prints it as one line and exits 2."""


ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               410: "namespace_deleted", 413: "payload_too_large", 429: "too_many_requests",
               500: "internal_error", 503: "unavailable", 507: "insufficient_storage"}


class HTTPError(Exception):
    """An answer other than success: becomes {"error": {"code", "message"}}.

    `close` drops the connection after answering (the request body was not read).
    """

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 headers: tuple = (), close: bool = False):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.code = code or ERROR_CODES.get(self.status) or \
            HTTPStatus(self.status).phrase.lower().replace(" ", "_").replace("-", "_")
        self.headers = list(headers)
        self.close = close
        if self.status == 401:
            self.headers.append(("WWW-Authenticate", 'Bearer realm="oxsync"'))
        if self.status in (429, 503) and not any(h[0] == "Retry-After" for h in self.headers):
            self.headers.append(("Retry-After", "1"))

    def payload(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


# ---------------------------------------------------------------------------
# 1. Configuration
# ---------------------------------------------------------------------------

def parse_listen(value: str) -> tuple[str, int]:
    """'0.0.0.0:8730', '[::]:8730' or ':8730' -> (host, port)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535, e.g. 0.0.0.0:8730")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def parse_path(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a file path, e.g. /data/sync.db")
    return value.strip()


def parse_username(value: str) -> str:
    """Empty means the default, 'admin' (a blanked line in .env)."""
    value = value.strip() or "admin"
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", value):
        raise ValueError("expected 1-64 letters, digits or _ . @ -")
    return value


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_count(value: str) -> int:
    """A non-negative whole number (bytes, seconds, attempts)."""
    value = value.strip().replace("_", "")
    if not value.isdigit():
        raise ValueError("expected a whole number of 0 or more")
    return int(value)


def parse_positive(value: str) -> int:
    number = parse_count(value)
    if number == 0:
        raise ValueError("expected a whole number of 1 or more")
    return number


def parse_optional_port(value: str) -> int | None:
    if not value.strip():
        return None
    port = parse_positive(value)
    if port > 65535:
        raise ValueError("expected a port from 1 to 65535")
    return port


def parse_optional_seconds(value: str) -> int | None:
    return parse_positive(value) if value.strip() else None


def parse_key(value: str) -> bytes | None:
    value = value.strip()
    if not value:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("expected 64 hex characters (32 bytes); make one with: "
                         "python3 -c 'import secrets; print(secrets.token_hex(32))'")
    return bytes.fromhex(value)


def parse_secret(value: str) -> bytes | None:
    value = value.strip()
    if value and len(value) < 32:
        raise ValueError("expected at least 32 characters")
    return value.encode() if value else None


def parse_origins(value: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
    if not origins:
        raise ValueError("expected * or a comma-separated list of origins")
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^\s/]+", origin):
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
    return origins


LOG_LEVELS = {"trace": "DEBUG", "debug": "DEBUG", "info": "INFO", "warn": "WARNING",
              "warning": "WARNING", "error": "ERROR", "off": "CRITICAL"}


def parse_log_level(value: str) -> str:
    """A level name; RUST_LOG-style values like 'oxsync=debug,hyper=info' also work."""
    for directive in value.lower().split(","):
        level = directive.rpartition("=")[2].strip()
        if level in LOG_LEVELS:
            return LOG_LEVELS[level]
    raise ValueError("expected one of trace, debug, info, warn, error")


def parse_log_format(value: str) -> str:
    value = value.strip().lower()
    if value not in ("text", "json"):
        raise ValueError("expected text or json")
    return value


@dataclasses.dataclass(frozen=True)
class Option:
    env: str
    flag: str
    parse: object
    default: str
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def parse_database_url(value: str) -> str | None:
    """Empty: the SQLite file at DB_PATH. Otherwise a PostgreSQL URL (libpq's own
    query options such as ?sslmode=require pass through)."""
    value = value.strip()
    if not value:
        return None
    if not re.match(r"postgres(ql)?://", value):
        raise ValueError("expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or leave "
                         "it empty to use the SQLite file at DB_PATH)")
    return value


# The reference server's STORE_METADATA_* settings: which client-supplied metadata
# fields are stored at all, for operators who want less of it on their server.
METADATA_FIELD_SETTINGS = {"REVISION": "revision", "UPLOADED_AT": "uploadedAt",
                           "DEVICE_ID": "deviceId", "CONTENT_HASH": "contentHash"}

STORE_OPTIONS = [
    Option("DB_PATH", "--db-path", parse_path, "/data/sync.db", "SQLite database file"),
    Option("DATABASE_URL", "--database-url", parse_database_url, "",
           "a postgresql:// URL: use that PostgreSQL database instead of DB_PATH "
           "(needs psycopg 3); its password is never shown"),
    Option("ENCRYPTION_KEY", "--encryption-key", parse_key, "",
           "64 hex characters; seals payloads at rest with ChaCha20-Poly1305"),
]

SERVER_OPTIONS = STORE_OPTIONS + [
    Option("LISTEN_ADDR", "--listen", parse_listen, "0.0.0.0:8730", "address to listen on"),
    Option("ADMIN_PASSWORD", "--admin-password", str, "",
           "creates or resets the admin user at startup (admin page is off without an admin user)"),
    Option("ADMIN_USERNAME", "--admin-username", parse_username, "admin",
           "name of that admin user"),
    Option("ADMIN_JWT_SECRET", "--admin-jwt-secret", parse_secret, "",
           "signs admin sessions; random per boot when unset (sessions end on restart)"),
    Option("ADMIN_COOKIE_SECURE", "--admin-cookie-secure", parse_bool, "true",
           "mark the session cookie Secure when the request is known to be HTTPS"),
    Option("TRUST_PROXY_HEADERS", "--trust-proxy-headers", parse_bool, "false",
           "believe X-Forwarded-For, X-Real-IP and X-Forwarded-Proto (only behind your own proxy)"),
    Option("SYNC_CORS_ALLOWED_ORIGINS", "--sync-cors-allowed-origins", parse_origins, "*",
           "origins allowed to call the sync API from a browser"),
    Option("MAX_BLOB_SIZE", "--max-blob-size", parse_positive, str(64 * MiB),
           "largest snapshot, bytes"),
    Option("MAX_OBJECT_SIZE", "--max-object-size", parse_positive, str(16 * MiB),
           "largest object, bytes"),
    Option("MIN_FREE_DISK_BYTES", "--min-free-disk-bytes", parse_count, str(100 * MiB),
           "writes answer 507 when the disk has less free space than this"),
    Option("LOGIN_WINDOW_SECONDS", "--login-window-seconds", parse_positive, "900",
           "failed admin logins are counted over this window"),
    Option("LOGIN_LOCKOUT_SECONDS", "--login-lockout-seconds", parse_positive, "900",
           "how long an address is locked out after too many failed logins"),
    Option("MAX_LOGIN_FAILURES", "--max-login-failures", parse_positive, "5",
           "failed logins within the window before the lockout"),
    Option("DEFAULT_TOKEN_TTL_SECONDS", "--default-token-ttl-seconds", parse_optional_seconds, "",
           "expiry for new tokens created without one (default: never)"),
    Option("OBJECT_RETENTION_SECONDS", "--object-retention-seconds", parse_positive, "2592000",
           "unreferenced objects and old manifests are kept at least this long"),
    Option("BLOB_HISTORY", "--blob-history", parse_count, "3",
           "previous snapshots kept per namespace, restorable with 'namespace rollback'"),
    Option("MAX_NAMESPACE_BYTES", "--max-namespace-bytes", parse_count, str(256 * MiB),
           "bytes of snapshot and objects one namespace may hold (0: no limit); a write "
           "beyond it answers 507 namespace_quota_exceeded"),
    Option("MAX_HISTORY_BYTES", "--max-history-bytes", parse_count, str(64 * MiB),
           "bytes of history (earlier manifests and snapshots) kept per namespace; past it "
           "the oldest go, whatever their age (0: bounded by age only)"),
    Option("MAX_NAMESPACES_PER_TOKEN", "--max-namespaces-per-token", parse_count, "100",
           "namespaces one token may bring into being by syncing (0: no limit; "
           "administrators can always create more)"),
    Option("METRICS_TOKEN", "--metrics-token", parse_secret, "",
           "bearer token for GET /metrics (Prometheus); /metrics is off without it"),
    Option("REQUEST_TIMEOUT_SECONDS", "--request-timeout-seconds", parse_positive, "30",
           "a request's headers (and a small body) must arrive within this time"),
    Option("MAX_CONNECTIONS", "--max-connections", parse_positive, "512",
           "open connections served at once; more are answered 503 with Retry-After"),
    Option("TLS_CERT_FILE", "--tls-cert", str, "",
           "PEM certificate (chain); with --tls-key, oxsync serves HTTPS itself"),
    Option("TLS_KEY_FILE", "--tls-key", str, "", "PEM private key of that certificate"),
    Option("REDIRECT_HTTP_PORT", "--redirect-http", parse_optional_port, "",
           "with TLS: also listen on this port and answer 308 to the HTTPS URL"),
    Option("LOG_LEVEL", "--log-level", parse_log_level, "info",
           "trace, debug, info, warn or error (RUST_LOG is accepted too)"),
    Option("LOG_FORMAT", "--log-format", parse_log_format, "text", "text or json"),
] + [Option(f"STORE_METADATA_{name}", f"--store-metadata-{name.lower().replace('_', '-')}",
            parse_bool, "true", f"keep the metadata field {field} (false: never stored)")
     for name, field in METADATA_FIELD_SETTINGS.items()]


def read_dotenv(path: str = ".env") -> dict[str, str]:
    """KEY=VALUE lines from an optional .env file; '#' starts a comment."""
    values = {}
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        return values
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def add_options(parser: argparse.ArgumentParser, options: list[Option]) -> None:
    for option in options:
        parser.add_argument(option.flag, dest=option.dest, metavar=option.env,
                            help=f"{option.help} [env {option.env}, default "
                                 f"{option.default or 'none'}]")


def resolve_options(args: argparse.Namespace, options: list[Option]) -> dict:
    """Flags win over the environment, the environment over .env, .env over defaults."""
    dotenv, real = read_dotenv(), dict(os.environ)
    for source in (dotenv, real):  # RUST_LOG stands in for LOG_LEVEL within its own source
        if "LOG_LEVEL" not in source and "RUST_LOG" in source:
            source["LOG_LEVEL"] = source["RUST_LOG"]
    environment = {**dotenv, **real}
    settings = {}
    for option in options:
        raw = getattr(args, option.dest, None)
        source = option.flag
        if raw is None:
            raw, source = environment.get(option.env), option.env
        if raw is None:
            raw, source = option.default, f"default of {option.env}"
        try:
            settings[option.dest] = option.parse(raw)
        except ValueError as error:
            secret = any(word in option.env for word in ("KEY", "SECRET", "PASSWORD", "TOKEN"))
            shown = "(hidden)" if secret else repr(mask_url(raw))
            raise ConfigError(f"invalid {source} {shown}: {error}") from None
    return settings


@dataclasses.dataclass
class Config:
    db_path: str = "/data/sync.db"
    database_url: str | None = None
    encryption_key: bytes | None = None
    listen: tuple[str, int] = ("0.0.0.0", 8730)
    admin_password: str = ""
    admin_username: str = "admin"
    admin_jwt_secret: bytes | None = None
    admin_cookie_secure: bool = True
    trust_proxy_headers: bool = False
    sync_cors_allowed_origins: tuple[str, ...] = ("*",)
    max_blob_size: int = 64 * MiB
    max_object_size: int = 16 * MiB
    min_free_disk_bytes: int = 100 * MiB
    login_window_seconds: int = 900
    login_lockout_seconds: int = 900
    max_login_failures: int = 5
    default_token_ttl_seconds: int | None = None
    object_retention_seconds: int = 2592000
    blob_history: int = 3
    max_namespace_bytes: int = 256 * MiB
    max_history_bytes: int = 64 * MiB
    max_namespaces_per_token: int = 100
    metrics_token: bytes | None = None
    request_timeout_seconds: int = 30
    max_connections: int = 512
    tls_cert: str = ""
    tls_key: str = ""
    redirect_http: int | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    store_metadata_revision: bool = True
    store_metadata_uploaded_at: bool = True
    store_metadata_device_id: bool = True
    store_metadata_content_hash: bool = True

    @property
    def unkept_metadata_fields(self) -> tuple[str, ...]:
        """The metadata fields STORE_METADATA_*=false says never to store."""
        return tuple(field for name, field in METADATA_FIELD_SETTINGS.items()
                     if not getattr(self, f"store_metadata_{name.lower()}"))


# ---------------------------------------------------------------------------
# 2. Names: namespaces, object paths, token patterns, entity tags, times
# ---------------------------------------------------------------------------

class BadName(ValueError):
    """A namespace, path or pattern that breaks the naming rules."""


def percent_decode(segment: str) -> str:
    """Decode one raw path segment strictly: every '%' starts '%XX', result is UTF-8."""
    raw = segment.encode("latin-1")  # the request line was read as latin-1
    if b"%" in raw and not re.fullmatch(rb"(?:[^%]|%[0-9A-Fa-f]{2})*", raw):
        raise BadName(f"invalid percent-encoding in {segment!r}")
    try:
        return urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadName(f"{segment!r} does not decode to UTF-8 text") from None


def check_segments(name: str, what: str) -> None:
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise BadName(f"{what} {name!r} has an empty, '.' or '..' part "
                      "(or starts or ends with '/')")


NAMESPACE_CHARS = re.compile(r"[\w./-]+")


def check_namespace(name: str) -> str:
    if not 1 <= len(name) <= 128:
        raise BadName(f"namespace must be 1 to 128 characters, got {len(name)}")
    if not NAMESPACE_CHARS.fullmatch(name):  # \w: Unicode letters and digits, and _
        char = next(c for c in name if not NAMESPACE_CHARS.fullmatch(c))
        raise BadName(f"namespace {name!r} contains {char!r}; "
                      "use letters, digits and - _ . / only")
    check_segments(name, "namespace")
    return name


# Look-alike names. 'team/bob' and 'team/bоb' (Cyrillic о) look the same in a list, and so
# do 'bob' and fullwidth 'ｂｏｂ'. A NEW namespace or token name must therefore be
#   1. NFKC-normalised (fullwidth, ligatures and other compatibility forms are refused,
#      with the normal form suggested);
#   2. of one script per part (namespaces: per '/'-segment; token names: per word), where
#      Latin may join Han with Hiragana/Katakana, Bopomofo or Hangul (the combinations of
#      Unicode's "highly restrictive" profile, UTS #39), so 'münchen-team' and '東京.sync'
#      are fine and 'bоb' is not;
#   3. not confusable with an existing name: the same skeleton (NFKC, the look-alike
#      letters and digits of CONFUSABLES mapped to Latin, case-folded).
# Names stored before this rule (or copied in with copy-store/restore) keep working; the
# lists (admin page, 'namespace list', 'token list') flag those that break it.
# The standard library has no script property and no confusables table, so both are
# approximated: a character's script is the first word of its Unicode name (LATIN,
# CYRILLIC, GREEK, CJK ...), and CONFUSABLES lists the common Cyrillic/Greek/Latin
# look-alikes only (README, "Look-alike names", says what this misses).

SCRIPT_WORDS = {"CJK": "Han", "IDEOGRAPHIC": "Han", "KATAKANA-HIRAGANA": "Katakana"}
SCRIPT_MIXES = ({"Latin", "Han", "Hiragana", "Katakana"}, {"Latin", "Han", "Bopomofo"},
                {"Latin", "Han", "Hangul"})
CONFUSABLES = str.maketrans(  # Cyrillic, Greek, then Latin and digits
    "АВЕКМНОРСТХУІЈЅӀавекмнорстхуіјѕһԁԛԝүӏѵ"
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧαβεηικμνορτυχγϲ"
    "ıɑɡ01I",
    "ABEKMHOPCTXYIJSIabekmhopctxyijshdqwylv"
    "ABEZHIKMNOPTYXabenikuvoptuxyc"
    "iagOll")


def char_script(char: str) -> str | None:
    """The script of a letter or digit; None for what every script shares (ASCII digits
    and punctuation, marks, symbols, spaces)."""
    category = unicodedata.category(char)
    if char.isascii() and not char.isalpha() or category[0] != "L" and category != "Nd":
        return None
    word = unicodedata.name(char, "UNKNOWN").split()[0]
    return SCRIPT_WORDS.get(word, word.title())


def mixed_scripts(part: str) -> set[str]:
    """The scripts of a segment or word when they are a mix the rule does not allow."""
    scripts = {script for script in map(char_script, part) if script}
    if len(scripts) <= 1 or any(scripts <= mix for mix in SCRIPT_MIXES):
        return set()
    return scripts


def skeleton(name: str) -> str:
    """What a name looks like: names with the same skeleton are confusable."""
    return unicodedata.normalize("NFKC", name).translate(CONFUSABLES).casefold()


def name_problem(name: str, parts: list[str]) -> str | None:
    """Why a name breaks rules 1 and 2 above, or None."""
    if name.isascii():
        return None  # NFKC already, no format characters, one script
    normal = unicodedata.normalize("NFKC", name)
    if normal != name:
        return f"is not in Unicode normal form NFKC (use {normal!r})"
    if any(unicodedata.category(char) == "Cf" for char in name):
        return "contains an invisible formatting character"
    for part in parts:
        scripts = mixed_scripts(part)
        if scripts:
            return f"mixes scripts ({', '.join(sorted(scripts))}) in {part!r}"
    return None


def name_parts(name: str, kind: str) -> list[str]:
    return name.split("/") if kind == "namespace" else re.split(r"[\W_]+", name)


def check_new_name(name: str, kind: str, existing, show_twin: bool = True) -> str:
    """Rules 1-3 for a new namespace or token name -> the name, or BadName. `existing`:
    the names already there; `show_twin`: name the one it looks like."""
    problem = name_problem(name, name_parts(name, kind))
    if problem:
        raise BadName(f"{kind} name {name!r} {problem}; look-alike names are refused")
    shape = skeleton(name)
    twin = next((other for other in existing if other != name and skeleton(other) == shape),
                None)
    if twin is not None:
        which = f" {twin!r}" if show_twin else ""
        raise BadName(f"{kind} name {name!r} looks like an existing {kind}{which}; choose "
                      "a name that differs in more than script, width or case")
    return name


def name_warnings(names: list[str], kind: str) -> dict[str, str]:
    """Names stored before the look-alike rule that break it -> what is wrong, for lists."""
    shapes = {name: skeleton(name) for name in names}
    by_shape: dict[str, list[str]] = {}
    for name, shape in shapes.items():
        by_shape.setdefault(shape, []).append(name)
    warnings = {}
    for name in names:
        twins = [other for other in by_shape[shapes[name]] if other != name]
        problem = name_problem(name, name_parts(name, kind))
        if twins:
            problem = f"looks like {', '.join(map(repr, twins[:3]))}" + \
                (f"; {problem}" if problem else "")
        if problem:
            warnings[name] = problem
    return warnings


def flag_lookalikes(views: list[dict], kind: str, among: list[str] | None = None) -> list[dict]:
    """Each namespace or token view gets 'nameWarning': what is wrong with its name, or None
    (shown by the admin page and the CLI lists). `among`: all names, when `views` is not."""
    warnings = name_warnings([view["name"] for view in views] if among is None else among, kind)
    for view in views:
        view["nameWarning"] = warnings.get(view["name"])
    return views


def check_object_path(path: str) -> str:
    if not 1 <= len(path) <= 1024:
        raise BadName(f"object path must be 1 to 1024 characters, got {len(path)}")
    if any(unicodedata.category(char) == "Cc" for char in path):
        raise BadName("object path contains a control character")
    check_segments(path, "object path")
    return path


def check_pattern(pattern: str) -> str:
    """Token namespace patterns: '*', an exact namespace, or 'prefix*'."""
    if pattern == "*":
        return pattern
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        if "*" in prefix or not prefix or any(not (c.isalnum() or c in "-_./") for c in prefix):
            raise BadName(f"pattern {pattern!r} must be '*', a namespace, or a namespace "
                          "prefix followed by one '*' (e.g. 'team/*')")
        return pattern
    try:
        return check_namespace(pattern)
    except BadName as error:
        raise BadName(f"pattern {pattern!r} is not '*', 'prefix*' or a namespace: {error}") \
            from None


def pattern_matches(pattern: str, namespace: str) -> bool:
    if pattern.endswith("*"):
        return namespace.startswith(pattern[:-1])
    return namespace == pattern


def clip(value, limit: int = 120) -> str:
    """A client-supplied value cut short for a log line: a 64 KiB header must not become a
    64 KiB line. The cut is marked, with the original length."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def clip_strings(values: tuple) -> tuple:
    return tuple(clip(value) if isinstance(value, str) else value for value in values)


ANY_ETAG = "*"
ETAG_ITEM = re.compile(r'\s*(?:W/)?(?:"([^"]*)"|([^,\s"]+))\s*(?:,|$)')


def parse_etags(value: str) -> frozenset[str] | str:
    """If-Match / If-None-Match: '*' or entity tags, quoted or bare, 'W/' allowed."""
    value = value.strip()
    if value == "*":
        return ANY_ETAG
    tags, position = set(), 0
    while position < len(value):
        match = ETAG_ITEM.match(value, position)
        if not match or match.end() == position:
            raise BadName(f"cannot parse entity tag list {value[:80]!r}")
        tags.add(match.group(1) if match.group(1) is not None else match.group(2))
        position = match.end()
    if not tags:
        raise BadName("empty entity tag list")
    return frozenset(tags)


def etag_matches(tags: frozenset[str] | str, current: str | None) -> bool:
    return current is not None and (tags == ANY_ETAG or current in tags)


def new_etag() -> str:
    return str(uuid.uuid4())


def rfc3339(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(value: str) -> float:
    try:
        moment = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 time like 2026-12-31T23:59:59Z") from None
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone; add Z for UTC")
    return moment.timestamp()


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


# ---------------------------------------------------------------------------
# 3. Crypto: payloads sealed with ChaCha20-Poly1305
# ---------------------------------------------------------------------------

NONCE_SIZE, TAG_SIZE = 12, 16
KEY_CHECK, KEY_CHECK_CONTEXT = b"oxsync key check v1", b"oxsync/key-check"


class SealError(Exception):
    """A stored payload that does not open with the key and place it claims."""


def key_id_of(key: bytes) -> str:
    return hashlib.sha256(b"oxsync key id\0" + key).hexdigest()[:16]


def payload_context(namespace: str, kind: str, path: str = "") -> bytes:
    """Associated data: a sealed payload opens only where it was written."""
    return "\0".join(("oxsync/v1", kind, namespace, path)).encode()


class Sealer:
    """Seals and opens payloads with the configured key; passes them through without one."""

    def __init__(self, key: bytes | None):
        self.key_id = key_id_of(key) if key else None
        self._aead = None
        if key:
            try:
                from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
            except ImportError:
                raise ConfigError("ENCRYPTION_KEY is set but the 'cryptography' package is not "
                                  "installed; install it with: python3 -m pip install "
                                  "cryptography") from None
            self._aead = ChaCha20Poly1305(key)

    @property
    def enabled(self) -> bool:
        return self._aead is not None

    def seal(self, data, context: bytes) -> tuple[bytes, str | None]:
        """-> (stored bytes, key id or None for plaintext)."""
        if not self._aead:
            return data, None
        nonce = os.urandom(NONCE_SIZE)
        if not hasattr(self._aead, "encrypt_into"):  # cryptography < 45
            return nonce + self._aead.encrypt(nonce, data, context), self.key_id
        sealed = bytearray(NONCE_SIZE + len(data) + TAG_SIZE)  # one buffer, no copies
        sealed[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, data, context, memoryview(sealed)[NONCE_SIZE:])
        return sealed, self.key_id

    def open_foreign(self, stored) -> bytes:
        """A payload sealed by the reference server: nonce + ciphertext, no associated data."""
        try:
            return self._aead.decrypt(stored[:NONCE_SIZE], stored[NONCE_SIZE:], None)
        except Exception:  # cryptography's InvalidTag
            raise SealError("authentication failed (another key, or not sealed)") from None

    def open(self, stored, key_id: str | None, context: bytes):
        if key_id is None:
            return stored
        if key_id != self.key_id:
            raise SealError(f"sealed with key {key_id}, but the configured key is "
                            f"{self.key_id or 'none'}")
        view = memoryview(stored)
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], context)
        except Exception:  # cryptography's InvalidTag
            raise SealError("authentication failed (data altered or moved)") from None


# ---------------------------------------------------------------------------
# 4. Storage: one store interface; a SQLite file or a PostgreSQL database
# ---------------------------------------------------------------------------
#
# Everything above the storage section sees a Store and, inside a transaction, its
# Records: every query oxsync runs is a Records method, written once for both
# stores with '?' placeholders. The stores differ only in the classes at the end of
# this section (SQLiteStore, PostgresStore): connecting, placeholders, payload bytes,
# locking, schema versions, and how a change made elsewhere is noticed.

# MIGRATIONS[n] upgrades a database from schema version n to n + 1. The DDL is
# SQLite's; PostgresStore.DDL_TYPES renames its few SQLite-only types and runs what
# follows "-- postgres: " (a comment to SQLite).
MIGRATIONS = [
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE namespaces (
        name TEXT PRIMARY KEY,
        metadata TEXT,              -- the JSON body GET metadata answers, NULL when empty
        etag TEXT,
        created_at REAL NOT NULL,
        updated_at REAL,
        deleted_at REAL
    );
    CREATE TABLE payloads (         -- the stored bytes of snapshots and objects
        id INTEGER PRIMARY KEY,
        key_id TEXT,                -- the key that sealed it, NULL: plaintext
        data BLOB NOT NULL          -- last, so SQLite can stream it (zeroblob, blob I/O)
    );
    CREATE TABLE blobs (
        namespace TEXT PRIMARY KEY,
        payload_id INTEGER NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE objects (
        namespace TEXT NOT NULL,
        path TEXT NOT NULL,
        payload_id INTEGER NOT NULL,
        size INTEGER NOT NULL,
        etag TEXT NOT NULL,
        content_type TEXT,
        updated_at REAL NOT NULL,
        UNIQUE (namespace, path)
    );
    CREATE TABLE manifests (
        namespace TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created_at REAL NOT NULL,
        etag TEXT NOT NULL,
        revision TEXT,
        device_id TEXT,
        format TEXT,
        token_id TEXT,
        rollback_of INTEGER,
        manifest TEXT NOT NULL,
        PRIMARY KEY (namespace, seq)
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        namespace_pattern TEXT NOT NULL,
        permissions TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        expires_at REAL,
        created_at REAL NOT NULL,
        rotated_at REAL,
        use_count INTEGER NOT NULL DEFAULT 0,
        last_used_at REAL,
        last_namespace TEXT,
        last_ip TEXT,
        last_client_version TEXT
    );
    CREATE TABLE conflicts (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        namespace TEXT NOT NULL,
        operation TEXT NOT NULL,
        path TEXT,
        device_id TEXT,
        token_id TEXT,
        requested_etag TEXT,
        requested_revision TEXT,
        remote_etag TEXT,
        remote_revision TEXT
    );
    CREATE TABLE admin_users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE login_failures (
        ip TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        window_start REAL NOT NULL,
        locked_until REAL
    );
    """,
    """
    CREATE TABLE blob_versions (
        namespace TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created_at REAL NOT NULL,
        revision TEXT,
        device_id TEXT,
        section_revisions TEXT,
        content_type TEXT,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        payload_id INTEGER NOT NULL,
        PRIMARY KEY (namespace, seq)
    );
    CREATE INDEX objects_by_age ON objects (namespace, updated_at);
    ALTER TABLE blobs ADD COLUMN revision TEXT;
    ALTER TABLE blobs ADD COLUMN device_id TEXT;
    ALTER TABLE blobs ADD COLUMN section_revisions TEXT;
    ALTER TABLE blobs ADD COLUMN content_type TEXT;
    """,
    """
    CREATE TABLE ended_sessions (   -- admin sessions logged out before their expiry
        session_id TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    );
    """,
    """
    ALTER TABLE namespaces ADD COLUMN blob_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE namespaces ADD COLUMN object_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE namespaces ADD COLUMN object_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE namespaces ADD COLUMN history_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE namespaces ADD COLUMN history_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE namespaces ADD COLUMN version_count INTEGER NOT NULL DEFAULT 0;
    UPDATE namespaces SET
        blob_bytes = coalesce((SELECT size FROM blobs b WHERE b.namespace = namespaces.name), 0),
        object_count = (SELECT count(*) FROM objects o WHERE o.namespace = namespaces.name),
        object_bytes = coalesce((SELECT sum(size) FROM objects o
                                 WHERE o.namespace = namespaces.name), 0),
        history_count = (SELECT count(*) FROM blob_versions v
                         WHERE v.namespace = namespaces.name),
        history_bytes = coalesce((SELECT sum(size) FROM blob_versions v
                                  WHERE v.namespace = namespaces.name), 0),
        version_count = (SELECT count(*) FROM manifests m WHERE m.namespace = namespaces.name);
    CREATE TABLE devices (          -- each device as its sync requests show it
        namespace TEXT NOT NULL,
        device_id TEXT NOT NULL,
        token_id TEXT,              -- NULL: never seen with a valid token
        first_seen_at REAL NOT NULL,
        last_seen_at REAL NOT NULL,
        client_version TEXT,
        last_ip TEXT,
        last_result TEXT NOT NULL,  -- ok, conflict, refused, too_large, deleted, error, ...
        last_status INTEGER NOT NULL,
        last_code TEXT,
        last_message TEXT,
        last_result_at REAL NOT NULL,
        PRIMARY KEY (namespace, device_id)
    );
    CREATE INDEX devices_by_last_seen ON devices (last_seen_at, namespace, device_id);
    CREATE INDEX namespaces_by_size ON namespaces ((blob_bytes + object_bytes + history_bytes),
                                                   name);
    CREATE INDEX namespaces_by_last_write ON namespaces ((coalesce(updated_at, 0)), name);
    CREATE INDEX namespaces_by_versions ON namespaces (version_count, name);
    """,
    """
    CREATE TABLE manifest_refs (    -- the object paths each kept manifest names (retention)
        namespace TEXT NOT NULL,
        seq INTEGER NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (namespace, seq, path)
    );
    CREATE INDEX manifest_refs_by_path ON manifest_refs (namespace, path, seq);
    CREATE TABLE unjudged_objects ( -- objects retention must look at again: their last
        namespace TEXT NOT NULL,    -- reference went with a dropped manifest, or their
        path TEXT NOT NULL,         -- namespace was restored
        PRIMARY KEY (namespace, path)
    );
    -- Payloads are mostly sealed or compressed by the client already: PostgreSQL need not
    -- try to compress them again.
    -- postgres: ALTER TABLE payloads ALTER COLUMN data SET STORAGE EXTERNAL;
    """,
    """
    ALTER TABLE manifests ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE namespaces ADD COLUMN manifest_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE namespaces ADD COLUMN path_chars INTEGER NOT NULL DEFAULT 0;
    UPDATE namespaces SET path_chars = coalesce((SELECT sum(length(path)) FROM objects o
                                                 WHERE o.namespace = namespaces.name), 0);
    ALTER TABLE namespaces ADD COLUMN created_by TEXT;
    CREATE INDEX namespaces_by_token ON namespaces (created_by);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# Every table, parents first (copy-store writes them in this order), with its key.
TABLES = {"settings": "key", "namespaces": "name", "payloads": "id", "blobs": "namespace",
          "blob_versions": "namespace, seq", "objects": "namespace, path",
          "manifests": "namespace, seq", "manifest_refs": "namespace, seq, path",
          "unjudged_objects": "namespace, path", "tokens": "id", "conflicts": "id",
          "admin_users": "username", "login_failures": "ip", "ended_sessions": "session_id",
          "devices": "namespace, device_id"}
PAYLOAD_OWNERS = ("blobs", "blob_versions", "objects")  # each payload has exactly one
BLOB_COLUMNS = "payload_id, revision, device_id, section_revisions, content_type, size, sha256"
BLOB_UPSERT = "ON CONFLICT (namespace) DO UPDATE SET " + ", ".join(
    f"{column} = excluded.{column}" for column in ["updated_at"] + BLOB_COLUMNS.split(", "))
KEEP_MANIFESTS = 32
# Kept in the namespaces table by every write (Records.add_to_counters, count_snapshots).
# history_* are the kept snapshots (blob_versions), version_* and manifest_bytes the
# manifests, path_chars the characters of the object paths (SQL length(), alike on both
# stores). They are the one bookkeeping: listings sort by them, quotas read them.
NAMESPACE_COUNTERS = ("blob_bytes", "object_count", "object_bytes", "history_count",
                      "history_bytes", "version_count", "manifest_bytes", "path_chars")
NAMESPACE_COLUMNS = ("n.*, EXISTS (SELECT 1 FROM blobs b WHERE b.namespace = n.name) "
                     "AS has_blob")
# Quotas count what a namespace costs on disk: each snapshot, object and manifest its
# bytes plus ITEM_BYTES for its row and index entries, an object its path too (a path
# may be 1,024 characters and is stored in the row, its index and manifest_refs), so a
# flood of empty items with long names also reaches the limit.
ITEM_BYTES = 256
SQL_LIST_BATCH = 256  # values in one IN (...) list
KEEP_CONFLICTS = 10000

# Listings (admin API, CLI): each sort names the keys rows are ordered by, the last one
# unique, so a page can start right after the last row shown (keyset paging, no OFFSET).
# The namespace sorts and lastSeen have indexes on exactly these expressions.
NAMESPACE_SORTS = {"name": ("n.name",),
                   "size": ("n.blob_bytes + n.object_bytes + n.history_bytes", "n.name"),
                   "lastWrite": ("coalesce(n.updated_at, 0)", "n.name"),
                   "versions": ("n.version_count", "n.name")}
TOKEN_SORTS = {"name": ("t.name", "t.id"), "created": ("t.created_at", "t.id"),
               "lastUsed": ("coalesce(t.last_used_at, 0)", "t.id")}
DEVICE_SORTS = {"lastSeen": ("d.last_seen_at", "d.namespace", "d.device_id"),
                "namespace": ("d.namespace", "d.device_id"),
                "device": ("d.device_id", "d.namespace")}
# The status filters: each '?' is a moment (now; for devices, the stale cutoff).
TOKEN_STATUSES = {"enabled": "t.enabled = 1 AND (t.expires_at IS NULL OR t.expires_at > ?)",
                  "disabled": "t.enabled = 0", "expired": "t.expires_at <= ?"}
DEVICE_STATUSES = {"ok": "d.last_result = 'ok' AND d.last_seen_at >= ?",
                   "problem": "d.last_result <> 'ok'", "stale": "d.last_seen_at < ?"}


def quota_use(row) -> tuple[int, int]:
    """A namespace row (NAMESPACE_COLUMNS) -> (its use against MAX_NAMESPACE_BYTES: the
    snapshot and objects, its history use against MAX_HISTORY_BYTES: the manifests and
    kept snapshots), from its counters alone."""
    used = row["blob_bytes"] + row["object_bytes"] + row["path_chars"] + \
        ITEM_BYTES * (row["object_count"] + int(row["has_blob"]))
    history = row["history_bytes"] + row["manifest_bytes"] + \
        ITEM_BYTES * (row["history_count"] + row["version_count"])
    return used, history


class Listing:
    """One page asked of a listing: search text, filters, sort, direction, the sort keys of
    the last row already shown (None: the first page) and the page size (None: all)."""

    def __init__(self, sort: str, descending: bool = False, search: str | None = None,
                 filters: dict | None = None, after: list | None = None,
                 limit: int | None = None):
        self.sort, self.descending, self.search = sort, descending, search
        self.filters, self.after, self.limit = filters or {}, after, limit

    def like(self, anywhere: bool = True) -> str:
        """The search as a LIKE pattern (matched against lower-cased text): anywhere in
        it, or at its start."""
        escaped = re.sub(r"([!%_])", r"!\1", self.search.lower())
        return f"{'%' if anywhere else ''}{escaped}%"


def status_condition(listing: Listing, statuses: dict, moment: float) -> list:
    """The listing's status filter (one of `statuses`) as a page condition."""
    sql = statuses.get(listing.filters.get("status"))
    return [] if sql is None else [(sql, (moment,) * sql.count("?"))]


class Page:
    """A page of rows, with how many rows there are in all and how many match."""

    def __init__(self, rows: list, keys: list, total: int, matched: int, more: bool):
        self.rows, self.keys, self.total, self.matched, self.more = \
            rows, keys, total, matched, more


class StoreError(Exception):
    """The database cannot be opened or used; the message says what to do."""


class StoreUnavailable(StoreError):
    """Nothing was stored, and trying again shortly may work (busy, or unreachable): 503."""


class StoreFull(StoreError):
    """The database's disk is full; nothing was stored: 507."""


class Records:
    """One transaction (or one reader) of a store: every query oxsync runs.

    Rows answer by column name and by position, in both stores. Methods that
    change a namespace's data expect lock_namespace() first, so that writers of
    one namespace take turns (whichever process they run in).
    """

    def __init__(self, store: "Store", connection, pipeline=None):
        self.store, self.db, self.pipeline = store, connection, pipeline

    # -- plumbing ------------------------------------------------------------

    def run(self, sql: str, params=()):
        return self.db.execute(self.store.sql(sql), params)

    def one(self, sql: str, params=()):
        return self.run(sql, params).fetchone()

    def all(self, sql: str, params=()) -> list:
        return self.run(sql, params).fetchall()

    def value(self, sql: str, params=()):
        row = self.one(sql, params)
        return None if row is None else row[0]

    def all_binary(self, sql: str, params=()) -> list:
        """all(), with PostgreSQL sending bytes as they are rather than as hex text."""
        return self.store.binary_cursor(self.db).execute(self.store.sql(sql),
                                                         params).fetchall()

    def count(self, sql: str, params=()) -> int:
        """Run a change -> the rows it changed (waiting for its answer in a pipeline)."""
        cursor = self.run(sql, params)
        if self.pipeline is not None:
            self.pipeline.sync()
        return cursor.rowcount

    def many(self, sql: str, rows) -> None:
        rows = list(rows)
        if rows:
            self.db.cursor().executemany(self.store.sql(sql), rows)

    def lock(self, name: str) -> None:
        """Hold the named lock until this transaction ends (see Store.lock_sql)."""
        self.store.lock(self.db, name)

    # -- settings ------------------------------------------------------------

    def setting(self, key: str) -> str | None:
        return self.value("SELECT value FROM settings WHERE key = ?", (key,))

    def set_setting(self, key: str, value: str | None) -> None:
        if value is None:
            self.run("DELETE FROM settings WHERE key = ?", (key,))
        else:
            self.run("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) "
                     "DO UPDATE SET value = excluded.value", (key, value))

    # -- namespaces ----------------------------------------------------------

    def namespace(self, name: str):
        return self.one("SELECT * FROM namespaces WHERE name = ?", (name,))

    def lock_namespace(self, name: str, now: float | None = None,
                       created_by: str | None = None):
        """Take the namespace's write turn -> its row (created empty at `now` if it is new
        and `now` is given, noting the token whose write made it), or None."""
        self.lock(f"namespace {name}")
        row = self.namespace(name)
        if row is None and now is not None:
            row = self.one("INSERT INTO namespaces (name, created_at, created_by) "
                           "VALUES (?, ?, ?) RETURNING *", (name, now, created_by))
        return row

    def lock_token_namespaces(self, token_id: str) -> int:
        """Take the token's turn to bring namespaces into being -> how many it has."""
        self.lock(f"token namespaces {token_id}")
        return self.value("SELECT count(*) FROM namespaces WHERE created_by = ?", (token_id,))

    def namespaces_per_token(self, token_ids: list[str]) -> dict[str, int]:
        """How many namespaces each of these tokens brought into being (a page's ids)."""
        counts = {}
        for start in range(0, len(token_ids), SQL_LIST_BATCH):
            chunk = token_ids[start:start + SQL_LIST_BATCH]
            counts.update(self.all(
                f"SELECT created_by, count(*) FROM namespaces WHERE created_by IN "
                f"({', '.join('?' for _ in chunk)}) GROUP BY created_by", chunk))
        return counts

    def namespace_use(self, name: str) -> tuple[int, int]:
        """The namespace's quota_use as this transaction sees it."""
        return quota_use(self.one(f"SELECT {NAMESPACE_COLUMNS} FROM namespaces n "
                                  "WHERE n.name = ?", (name,)))

    def create_namespace(self, name: str, now: float) -> bool:
        """An empty namespace -> False when it exists already."""
        return self.count("INSERT INTO namespaces (name, created_at) VALUES (?, ?) "
                          "ON CONFLICT (name) DO NOTHING", (name, now)) > 0

    def namespace_names(self) -> list[str]:
        """Every namespace's name, deleted ones too (after lock_namespace_names)."""
        return [row[0] for row in self.all("SELECT name FROM namespaces")]

    def lock_namespace_names(self) -> None:
        """For creating a namespace: two look-alike names must not both pass the check."""
        self.lock("namespace names")

    def namespace_views(self, name: str | None = None) -> list[dict]:
        """Namespaces with their sizes and latest manifest facts, for the CLI and admin API."""
        where, params = ("WHERE n.name = ?", (name,)) if name is not None else ("", ())
        rows = self.all(f"SELECT {NAMESPACE_COLUMNS} FROM namespaces n {where} ORDER BY n.name",
                        params)
        return [namespace_view(row) for row in rows]

    def add_to_counters(self, namespace: str, **deltas: int) -> None:
        """Keep the namespace's NAMESPACE_COUNTERS in step with its rows, in the same
        transaction as the write: listings sort by size without adding up every object."""
        if set(deltas) - set(NAMESPACE_COUNTERS):
            raise ValueError(f"no namespace counters {sorted(deltas)}")
        self.run(f"UPDATE namespaces SET {', '.join(f'{c} = {c} + ?' for c in deltas)} "
                 "WHERE name = ?", (*deltas.values(), namespace))

    def count_snapshots(self, namespace: str) -> None:
        """The snapshot counters, recounted: a namespace keeps at most BLOB_HISTORY + 1."""
        self.run("UPDATE namespaces SET blob_bytes = coalesce((SELECT size FROM blobs "
                 "WHERE namespace = ?), 0), history_count = (SELECT count(*) FROM "
                 "blob_versions WHERE namespace = ?), history_bytes = coalesce((SELECT "
                 "sum(size) FROM blob_versions WHERE namespace = ?), 0) WHERE name = ?",
                 (namespace,) * 4)

    def import_namespace(self, name: str, metadata: str | None, etag: str | None,
                         created_at: float, updated_at: float | None,
                         deleted_at: float | None) -> None:
        """A namespace moved from elsewhere (import-reference), metadata text as it was."""
        self.run("INSERT INTO namespaces (name, metadata, etag, created_at, updated_at, "
                 "deleted_at) VALUES (?, ?, ?, ?, ?, ?)",
                 (name, metadata, etag, created_at, updated_at, deleted_at))

    def set_namespace_deleted(self, name: str, deleted: bool) -> bool:
        """Soft delete or restore -> False when there is no such namespace. Retention
        passes over a deleted namespace, so a restored one has all its objects judged."""
        if not deleted:
            self.run("INSERT INTO unjudged_objects (namespace, path) SELECT namespace, path "
                     "FROM objects WHERE namespace = ? ON CONFLICT (namespace, path) DO NOTHING",
                     (name,))
        return self.count("UPDATE namespaces SET deleted_at = ? WHERE name = ?",
                          (time.time() if deleted else None, name)) > 0

    def save_metadata(self, namespace: str, metadata: dict, now: float) -> None:
        self.run("UPDATE namespaces SET metadata = ?, etag = ?, updated_at = ? WHERE name = ?",
                 (json_body(metadata).decode(), metadata["etag"], now, namespace))

    def touch_namespace(self, namespace: str, now: float) -> None:
        self.run("UPDATE namespaces SET updated_at = ? WHERE name = ?", (now, namespace))

    def purge_namespace(self, name: str) -> int:
        """Remove a namespace and everything in it -> bytes freed."""
        owned = self.all(" UNION ALL ".join(f"SELECT payload_id, size FROM {table} "
                                            "WHERE namespace = ?" for table in PAYLOAD_OWNERS),
                         (name,) * len(PAYLOAD_OWNERS))
        with self.store.erasing(self.db):
            self.drop_payloads(row[0] for row in owned)
        for table, column in (("objects", "namespace"), ("blobs", "namespace"),
                              ("blob_versions", "namespace"), ("manifest_refs", "namespace"),
                              ("manifests", "namespace"), ("unjudged_objects", "namespace"),
                              ("conflicts", "namespace"), ("devices", "namespace"),
                              ("namespaces", "name")):
            self.run(f"DELETE FROM {table} WHERE {column} = ?", (name,))
        return sum(row[1] for row in owned)

    # -- payloads: the stored (sealed) bytes of snapshots and objects ---------

    def store_payload(self, stored, key_id: str | None, payload_id: int | None = None) -> int:
        """Write a payload (new, or replacing `payload_id`) -> its id."""
        return self.store.write_payload(self.db, stored, key_id, payload_id)

    def read_payload(self, payload_id: int):
        return self.store.read_payload(self.db, payload_id)

    def drop_payloads(self, payload_ids) -> None:
        self.many("DELETE FROM payloads WHERE id = ?", ((i,) for i in payload_ids))

    def plaintext_payload_count(self) -> int:
        return self.value("SELECT count(*) FROM payloads WHERE key_id IS NULL")

    def payloads_sealed_with(self, table: str, key_id: str | None, limit: int) -> list:
        """Payloads sealed with `key_id` (None: plaintext), with where they belong."""
        path = "o.path" if table == "objects" else "''"
        return self.all(f"SELECT p.id, o.namespace, {path} AS path, p.key_id FROM {table} o "
                        "JOIN payloads p ON p.id = o.payload_id "
                        "WHERE p.key_id IS NOT DISTINCT FROM ? LIMIT ?", (key_id, limit))

    # -- snapshots (blobs) and objects ---------------------------------------

    def blob(self, namespace: str):
        """The snapshot's payload id, key id and the namespace's etag, or None."""
        return self.one("SELECT b.payload_id, p.key_id, n.etag FROM blobs b "
                        "JOIN payloads p ON p.id = b.payload_id "
                        "JOIN namespaces n ON n.name = b.namespace WHERE b.namespace = ?",
                        (namespace,))

    def put_blob(self, namespace: str, now: float, payload_id: int, revision: str,
                 device_id: str | None, section_revisions: str | None,
                 content_type: str | None, size: int, digest: str) -> None:
        self.run(f"INSERT INTO blobs (namespace, updated_at, {BLOB_COLUMNS}) "
                 f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) {BLOB_UPSERT}",
                 (namespace, now, payload_id, revision, device_id, section_revisions,
                  content_type, size, digest))
        self.count_snapshots(namespace)

    def keep_blob_version(self, namespace: str, keep: int) -> None:
        """Move the current snapshot into blob_versions (its payload stays where it is), or
        drop it when no history is kept; versions beyond the newest `keep` are dropped."""
        if keep <= 0:
            self.run("DELETE FROM payloads WHERE id = (SELECT payload_id FROM blobs "
                     "WHERE namespace = ?)", (namespace,))
            return
        kept = self.value(f"INSERT INTO blob_versions (namespace, seq, created_at, "
                          f"{BLOB_COLUMNS}) SELECT namespace, (SELECT coalesce(max(seq), 0) + 1 "
                          f"FROM blob_versions WHERE namespace = ?), updated_at, {BLOB_COLUMNS} "
                          "FROM blobs WHERE namespace = ? RETURNING seq", (namespace, namespace))
        if kept:
            self.drop_blob_versions(namespace, kept - keep)

    def drop_blob_versions(self, namespace: str, up_to_seq: int) -> int:
        """Drop the kept snapshots up to `up_to_seq` with their payloads (every removal of
        a kept snapshot goes through here, so the counters stay in step) -> how many."""
        dropped = self.all("DELETE FROM blob_versions WHERE namespace = ? AND seq <= ? "
                           "RETURNING payload_id", (namespace, up_to_seq))
        self.drop_payloads(row[0] for row in dropped)
        self.count_snapshots(namespace)
        return len(dropped)

    def blob_version(self, namespace: str, seq: int):
        return self.one("SELECT * FROM blob_versions WHERE namespace = ? AND seq = ?",
                        (namespace, seq))

    def blob_versions(self, namespace: str) -> list:
        return self.all("SELECT seq, created_at, revision, device_id, size, sha256 "
                        "FROM blob_versions WHERE namespace = ? ORDER BY seq DESC", (namespace,))

    def restore_blob_version(self, namespace: str, seq: int, now: float) -> None:
        """Make a kept snapshot version the current snapshot (after keep_blob_version)."""
        self.run(f"INSERT INTO blobs (namespace, updated_at, {BLOB_COLUMNS}) "
                 f"SELECT namespace, ?, {BLOB_COLUMNS} FROM blob_versions "
                 f"WHERE namespace = ? AND seq = ? {BLOB_UPSERT}", (now, namespace, seq))
        self.run("DELETE FROM blob_versions WHERE namespace = ? AND seq = ?", (namespace, seq))
        self.count_snapshots(namespace)

    def object(self, namespace: str, path: str):
        return self.one("SELECT o.payload_id, p.key_id, o.etag, o.content_type, o.updated_at "
                        "FROM objects o JOIN payloads p ON p.id = o.payload_id "
                        "WHERE o.namespace = ? AND o.path = ?", (namespace, path))

    def put_object(self, namespace: str, path: str, payload_id: int, size: int, etag: str,
                   content_type: str | None, now: float) -> None:
        self.count_object_write(namespace, path, size)
        self.run("INSERT INTO objects (namespace, path, payload_id, size, etag, content_type, "
                 "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (namespace, path) "
                 "DO UPDATE SET payload_id = excluded.payload_id, size = excluded.size, "
                 "etag = excluded.etag, content_type = excluded.content_type, "
                 "updated_at = excluded.updated_at",
                 (namespace, path, payload_id, size, etag, content_type, now))

    def count_object_write(self, namespace: str, path: str, size: int) -> None:
        was = self.value("SELECT size FROM objects WHERE namespace = ? AND path = ?",
                         (namespace, path))
        self.add_to_counters(namespace, object_count=int(was is None),
                             object_bytes=size - (was or 0),
                             path_chars=len(path) if was is None else 0)

    def missing_objects(self, namespace: str, paths: set[str]) -> list[str]:
        stored = {row[0] for row in self.all("SELECT path FROM objects WHERE namespace = ?",
                                             (namespace,))}
        return sorted(paths - stored)

    # -- history (every accepted manifest) and retention -----------------------

    def record_manifest(self, namespace: str, metadata: dict, now: float,
                        token_id: str | None, rollback_of: int | None = None) -> int:
        """Every accepted manifest becomes a version in the namespace's history, with the
        object paths it references (manifest_refs, for retention) -> its seq."""
        stored = json_body(metadata)
        inserted = self.run(
            "INSERT INTO manifests (namespace, seq, created_at, etag, revision, device_id, "
            "format, token_id, rollback_of, manifest, size) SELECT ?, coalesce(max(seq), 0) "
            "+ 1, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM manifests WHERE namespace = ? RETURNING seq",
            (namespace, now, metadata["etag"], text_or_none(metadata.get("revision")),
             text_or_none(metadata.get("deviceId")), text_or_none(metadata.get("format")),
             token_id, rollback_of, stored.decode(), len(stored), namespace))
        paths = sorted(manifest_paths(metadata))
        if paths:  # the seq just taken, so that the seq need not travel back and forth
            values = ", ".join("(?)" for _ in paths)
            self.run("INSERT INTO manifest_refs (namespace, seq, path) SELECT ?, (SELECT "
                     "max(seq) FROM manifests WHERE namespace = ?), column1 FROM (VALUES "
                     f"{values}) AS paths", (namespace, namespace, *paths))
        self.add_to_counters(namespace, version_count=1, manifest_bytes=len(stored))
        return inserted.fetchone()[0]

    def drop_manifests(self, namespace: str, seqs) -> int:
        """Remove versions from the history (after lock_namespace), with their references;
        an object that no kept version references any more is queued for retention to
        judge -> versions removed."""
        removed, freed = 0, 0
        seqs = sorted(set(seqs))
        for start in range(0, len(seqs), SQL_LIST_BATCH):
            chunk = seqs[start:start + SQL_LIST_BATCH]
            listed = ", ".join("?" for _ in chunk)
            self.run("INSERT INTO unjudged_objects (namespace, path) SELECT DISTINCT namespace, "
                     f"path FROM manifest_refs r WHERE namespace = ? AND seq IN ({listed}) AND "
                     "NOT EXISTS (SELECT 1 FROM manifest_refs k WHERE k.namespace = r.namespace "
                     f"AND k.path = r.path AND k.seq NOT IN ({listed})) "
                     "ON CONFLICT (namespace, path) DO NOTHING", (namespace, *chunk, *chunk))
            self.run(f"DELETE FROM manifest_refs WHERE namespace = ? AND seq IN ({listed})",
                     (namespace, *chunk))
            sizes = [row[0] for row in self.all(f"DELETE FROM manifests WHERE namespace = ? "
                                                f"AND seq IN ({listed}) RETURNING size",
                                                (namespace, *chunk))]
            removed, freed = removed + len(sizes), freed + sum(sizes)
        if removed:
            self.add_to_counters(namespace, version_count=-removed, manifest_bytes=-freed)
        return removed

    def every_manifest(self, batch: int = 500):
        """Each stored manifest's (namespace, seq, manifest text), read `batch` at a time
        (migrations)."""
        after = ("", 0)
        while True:
            rows = self.all("SELECT namespace, seq, manifest FROM manifests WHERE (namespace, "
                            "seq) > (?, ?) ORDER BY namespace, seq LIMIT ?", (*after, batch))
            yield from [tuple(row) for row in rows]
            if len(rows) < batch:
                return
            after = (rows[-1][0], rows[-1][1])

    def fill_manifest_refs(self) -> None:
        """The references of manifests recorded before manifest_refs existed (migration)."""
        self.many("INSERT INTO manifest_refs (namespace, seq, path) VALUES (?, ?, ?)",
                  [(namespace, seq, path) for namespace, seq, text in self.every_manifest()
                   for path in manifest_paths(json.loads(text))])

    def fill_manifest_sizes(self) -> None:
        """The stored bytes of manifests recorded before manifests.size existed, and each
        namespace's manifest_bytes (migration; in Python, as SQLite's length() counts
        characters)."""
        self.many("UPDATE manifests SET size = ? WHERE namespace = ? AND seq = ?",
                  [(len(text.encode()), namespace, seq)
                   for namespace, seq, text in self.every_manifest()])
        self.run("UPDATE namespaces SET manifest_bytes = coalesce((SELECT sum(size) FROM "
                 "manifests m WHERE m.namespace = namespaces.name), 0)")

    def trim_history(self, namespace: str, max_bytes: int, keep_newest: int) -> dict:
        """Drop the oldest kept manifests and snapshots (by time, whatever their age)
        until the history counts at most `max_bytes`, never the newest `keep_newest`
        manifests -> {"manifests": n, "snapshots": n, "bytes": freed}."""
        trimmed = {"manifests": 0, "snapshots": 0, "bytes": 0}
        excess = self.namespace_use(namespace)[1] - max_bytes
        while excess > 0:
            oldest = self.all(
                "SELECT * FROM (SELECT 'manifest' AS kind, seq, created_at, size "
                "FROM manifests WHERE namespace = ? AND seq <= (SELECT max(seq) "
                "FROM manifests WHERE namespace = ?) - ? ORDER BY seq LIMIT 256) AS m "
                "UNION ALL SELECT 'snapshot', seq, created_at, size FROM blob_versions "
                "WHERE namespace = ? ORDER BY created_at, seq LIMIT 256",
                (namespace, namespace, keep_newest, namespace))
            if not oldest:
                break
            doomed = []
            for row in oldest:
                if excess <= 0:
                    break
                doomed.append(row)
                excess -= row["size"] + ITEM_BYTES
            manifests = [row["seq"] for row in doomed if row["kind"] == "manifest"]
            snapshots = [row["seq"] for row in doomed if row["kind"] == "snapshot"]
            self.drop_manifests(namespace, manifests)
            if snapshots:
                self.drop_blob_versions(namespace, max(snapshots))
            trimmed["manifests"] += len(manifests)
            trimmed["snapshots"] += len(snapshots)
            trimmed["bytes"] += sum(row["size"] + ITEM_BYTES for row in doomed)
        return trimmed

    def manifests(self, namespace: str, limit: int, before: int | None = None,
                  columns: str = "*") -> list:
        """The newest `limit` versions (those before seq `before`, when given)."""
        return self.all(f"SELECT {columns} FROM manifests WHERE namespace = ? AND seq < ? "
                        "ORDER BY seq DESC LIMIT ?",
                        (namespace, (1 << 62) if before is None else before, limit))

    def manifest(self, namespace: str, seq: int):
        return self.one("SELECT * FROM manifests WHERE namespace = ? AND seq = ?",
                        (namespace, seq))

    def previous_manifest(self, namespace: str, seq: int):
        return self.one("SELECT * FROM manifests WHERE namespace = ? AND seq < ? "
                        "ORDER BY seq DESC LIMIT 1", (namespace, seq))

    def retention_mark(self) -> float:
        """Every object last written before this time has been judged by retention (and
        is queued in unjudged_objects again when it may have lost its last reference)."""
        mark = self.setting("retention_judged_until")
        return float("-inf") if mark is None else float(mark)

    def namespaces_to_prune(self, cutoff: float, judged_until: float) -> list[str]:
        """Live namespaces where something may have expired: an oldest manifest beyond
        the newest KEEP_MANIFESTS that is older than `cutoff` (versions are recorded in
        time order), objects that crossed the cutoff since `judged_until`, or queued ones.
        A few index lookups per namespace; no manifest is read."""
        return [row[0] for row in self.all(
            "SELECT name FROM namespaces n WHERE deleted_at IS NULL AND (EXISTS (SELECT 1 "
            "FROM manifests m WHERE m.namespace = n.name AND m.created_at < ? AND m.seq = "
            "(SELECT min(seq) FROM manifests WHERE namespace = n.name) AND m.seq <= (SELECT "
            "max(seq) FROM manifests WHERE namespace = n.name) - ?) OR EXISTS (SELECT 1 FROM "
            "objects o WHERE o.namespace = n.name AND o.updated_at >= ? AND o.updated_at < ?) "
            "OR EXISTS (SELECT 1 FROM unjudged_objects u WHERE u.namespace = n.name)) "
            "ORDER BY name", (cutoff, KEEP_MANIFESTS, judged_until, cutoff))]

    def prune_namespace(self, namespace: str, cutoff: float, judged_until: float,
                        limit: int) -> dict:
        """Retention for one namespace (after lock_namespace), at most `limit` manifests
        and `limit` objects at a time (call again while it removes `limit` of either).

        Manifests older than the window are dropped beyond the newest KEEP_MANIFESTS;
        an object goes only when no kept manifest references it and it was last
        written before the window (an upload in progress writes objects first). Only
        objects that crossed the window since `judged_until`, or were queued, are looked at.
        """
        manifests_removed = self.drop_manifests(namespace, (row[0] for row in self.all(
            "SELECT seq FROM manifests WHERE namespace = ? AND created_at < ? AND seq <= "
            "(SELECT max(seq) FROM manifests WHERE namespace = ?) - ? ORDER BY seq LIMIT ?",
            (namespace, cutoff, namespace, KEEP_MANIFESTS, limit))))
        doomed = self.all(
            "SELECT path, size, payload_id FROM objects o WHERE namespace = ? AND updated_at "
            "< ? AND (updated_at >= ? OR path IN (SELECT path FROM unjudged_objects WHERE "
            "namespace = ?)) AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE "
            "r.namespace = o.namespace AND r.path = o.path) ORDER BY path LIMIT ?",
            (namespace, cutoff, judged_until, namespace, limit))
        more = manifests_removed == limit or len(doomed) == limit
        if doomed:  # the current manifest is always a kept one; this is a second guard
            current = manifest_paths(stored_metadata(self.namespace(namespace)))
            doomed = [row for row in doomed if row["path"] not in current]
        self.many("DELETE FROM objects WHERE namespace = ? AND path = ?",
                  ((namespace, row["path"]) for row in doomed))
        self.drop_payloads(row["payload_id"] for row in doomed)
        self.add_to_counters(namespace, object_count=-len(doomed), object_bytes=-sum(
            row["size"] for row in doomed), path_chars=-sum(len(row["path"]) for row in doomed))
        more = more and bool(manifests_removed or doomed)
        if not more:
            self.run("DELETE FROM unjudged_objects WHERE namespace = ?", (namespace,))
        return {"objectsRemoved": len(doomed),
                "bytesReclaimed": sum(row["size"] for row in doomed),
                "manifestsRemoved": manifests_removed, "more": more}

    def copy_snapshot_fields(self) -> None:
        """Schema 2 keeps a snapshot's revision and such beside it, copied once from the
        metadata (where schema 1 kept them)."""
        for row in self.all("SELECT b.namespace, n.metadata FROM blobs b "
                            "JOIN namespaces n ON n.name = b.namespace"):
            metadata = stored_metadata(row)
            sections = metadata.get("sectionRevisions")
            self.run("UPDATE blobs SET revision = ?, device_id = ?, section_revisions = ?, "
                     "content_type = ? WHERE namespace = ?",
                     (text_or_none(metadata.get("revision")),
                      text_or_none(metadata.get("deviceId")),
                      None if sections is None else json.dumps(sections),
                      text_or_none(metadata.get("contentType")), row["namespace"]))

    # -- conflicts -----------------------------------------------------------

    def record_conflict(self, namespace, operation, *, path=None, device_id=None,
                        token_id=None, requested_etag=None, requested_revision=None,
                        remote_etag=None, remote_revision=None) -> None:
        """One row per 412, never the payload; the newest KEEP_CONFLICTS are kept."""
        self.run("INSERT INTO conflicts (at, namespace, operation, path, device_id, token_id, "
                 "requested_etag, requested_revision, remote_etag, remote_revision) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (time.time(), namespace, operation, path, text_or_none(device_id), token_id,
                  requested_etag, text_or_none(requested_revision), remote_etag,
                  text_or_none(remote_revision)))
        self.run("DELETE FROM conflicts WHERE id <= (SELECT max(id) FROM conflicts) - ?",
                 (KEEP_CONFLICTS,))

    CONFLICT_FIELDS = ("at", "namespace", "operation", "path", "device_id", "requested_etag",
                       "requested_revision", "remote_etag", "remote_revision")

    def import_conflict(self, **fields) -> None:
        """A conflict recorded elsewhere (import-reference), at the time it happened."""
        self.run(f"INSERT INTO conflicts ({', '.join(self.CONFLICT_FIELDS)}) "
                 f"VALUES ({', '.join('?' for _ in self.CONFLICT_FIELDS)})",
                 tuple(fields.get(name) for name in self.CONFLICT_FIELDS))

    def conflicts(self, limit: int) -> list:
        return self.all("SELECT * FROM conflicts ORDER BY id DESC LIMIT ?", (limit,))

    # -- tokens --------------------------------------------------------------

    def token_for_namespace(self, token_hash: str, namespace: str):
        """The token's row joined with the namespace's (its columns NULL when there is none)."""
        return self.one(
            "SELECT t.id, t.name, t.namespace_pattern, t.permissions, t.enabled, t.expires_at, "
            "n.name AS namespace, n.metadata, n.etag, n.deleted_at FROM tokens t "
            "LEFT JOIN namespaces n ON n.name = ? WHERE t.token_hash = ?",
            (namespace, token_hash))

    def tokens(self) -> list:
        return self.all("SELECT * FROM tokens ORDER BY created_at, id")

    def token_names(self) -> list[str]:
        return [row[0] for row in self.all("SELECT name FROM tokens")]

    def token(self, token_id: str):
        return self.one("SELECT * FROM tokens WHERE id = ?", (token_id,))

    def insert_token(self, token_id: str, name: str, token_hash: str, pattern: str,
                     permissions: str, expires_at: float | None, now: float) -> None:
        self.run("INSERT INTO tokens (id, name, token_hash, namespace_pattern, permissions, "
                 "expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (token_id, name, token_hash, pattern, permissions, expires_at, now))

    IMPORTED_TOKEN_FIELDS = ("id", "name", "token_hash", "namespace_pattern", "permissions",
                             "enabled", "expires_at", "created_at", "rotated_at", "use_count",
                             "last_used_at", "last_namespace", "last_ip",
                             "last_client_version")

    def import_token(self, **fields) -> None:
        """A token moved from elsewhere (import-reference) with its use so far."""
        self.run(f"INSERT INTO tokens ({', '.join(self.IMPORTED_TOKEN_FIELDS)}) "
                 f"VALUES ({', '.join('?' for _ in self.IMPORTED_TOKEN_FIELDS)})",
                 tuple(fields[name] for name in self.IMPORTED_TOKEN_FIELDS))

    TOKEN_FIELDS = ("name", "enabled", "expires_at", "token_hash", "rotated_at")

    def update_token(self, token_id: str, **changes) -> bool:
        """Change some of TOKEN_FIELDS -> False when there is no such token."""
        if not changes or set(changes) - set(self.TOKEN_FIELDS):
            raise ValueError(f"cannot change {sorted(changes)} of a token")
        values = [int(v) if isinstance(v, bool) else v for v in changes.values()]
        return self.count(f"UPDATE tokens SET {', '.join(f'{c} = ?' for c in changes)} "
                          "WHERE id = ?", (*values, token_id)) > 0

    def delete_token(self, token_id: str) -> bool:
        return self.count("DELETE FROM tokens WHERE id = ?", (token_id,)) > 0

    def add_token_use(self, uses: dict[str, list]) -> None:
        """uses: token id -> [count, last time, namespace, ip, client version]."""
        self.many("UPDATE tokens SET use_count = use_count + ?, last_used_at = ?, "
                  "last_namespace = ?, last_ip = ?, "
                  "last_client_version = coalesce(?, last_client_version) WHERE id = ?",
                  ((*values, token_id) for token_id, values in uses.items()))

    # -- devices, as their sync requests show them ------------------------------

    def record_devices(self, seen: dict[tuple, list]) -> None:
        """seen: (namespace, device id) -> DeviceLog's fields. A device refused with an
        unknown token (token id None) is kept only when its namespace exists; its last
        result's time stays while the result does not change."""
        self.many(
            "INSERT INTO devices (namespace, device_id, first_seen_at, token_id, "
            "last_seen_at, client_version, last_ip, last_result, last_status, last_code, "
            "last_message, last_result_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
            "WHERE CAST(? AS TEXT) IS NOT NULL OR EXISTS (SELECT 1 FROM namespaces "
            "WHERE name = ?) ON CONFLICT (namespace, device_id) DO UPDATE SET "
            "token_id = coalesce(excluded.token_id, devices.token_id), "
            "last_seen_at = excluded.last_seen_at, "
            "client_version = coalesce(excluded.client_version, devices.client_version), "
            "last_ip = excluded.last_ip, last_result = excluded.last_result, "
            "last_status = excluded.last_status, last_code = excluded.last_code, "
            "last_message = excluded.last_message, last_result_at = CASE WHEN "
            "devices.last_result = excluded.last_result AND devices.last_status = "
            "excluded.last_status THEN devices.last_result_at ELSE excluded.last_result_at "
            "END", ((*key, *values, values[1], key[0]) for key, values in seen.items()))

    def device_page(self, listing: Listing, stale_before: float) -> Page:
        conditions = self.search_condition(listing, "d.device_id", "d.namespace", "t.name",
                                           "d.last_ip")
        if "namespace" in listing.filters:
            conditions.append(("d.namespace = ?", (listing.filters["namespace"],)))
        conditions += status_condition(listing, DEVICE_STATUSES, stale_before)
        return self.page("d.*, t.name AS token_name",
                         "devices d LEFT JOIN tokens t ON t.id = d.token_id",
                         DEVICE_SORTS[listing.sort], conditions, listing)

    # -- admin users, sessions and login throttling ----------------------------

    def admin_user(self, username: str):
        return self.one("SELECT * FROM admin_users WHERE username = ?", (username,))

    def admin_users(self) -> list:
        return self.all("SELECT * FROM admin_users ORDER BY username")

    def admin_exists(self) -> bool:
        return self.one("SELECT 1 FROM admin_users WHERE enabled = 1 LIMIT 1") is not None

    def lock_admin_users(self) -> None:
        """For changes that must leave at least one enabled admin user."""
        self.lock("admin users")

    def other_enabled_admins(self, username: str) -> int:
        return self.value("SELECT count(*) FROM admin_users WHERE enabled = 1 AND "
                          "username != ?", (username,))

    def insert_admin_user(self, username: str, password_hash: str, now: float) -> bool:
        """-> False when the name is taken."""
        return self.count("INSERT INTO admin_users (username, password_hash, enabled, "
                          "created_at, updated_at) VALUES (?, ?, 1, ?, ?) "
                          "ON CONFLICT (username) DO NOTHING",
                          (username, password_hash, now, now)) > 0

    def set_admin_user(self, username: str, *, password_hash: str | None = None,
                       enabled: bool | None = None, now: float) -> None:
        if password_hash is not None:
            self.run("UPDATE admin_users SET password_hash = ?, updated_at = ? "
                     "WHERE username = ?", (password_hash, now, username))
        if enabled is not None:
            self.run("UPDATE admin_users SET enabled = ?, updated_at = ? WHERE username = ?",
                     (int(enabled), now, username))

    def delete_admin_user(self, username: str) -> None:
        self.run("DELETE FROM admin_users WHERE username = ?", (username,))

    def end_session(self, session_id: str, expires_at: float, now: float) -> None:
        self.run("DELETE FROM ended_sessions WHERE expires_at < ?", (now,))
        self.run("INSERT INTO ended_sessions (session_id, expires_at) VALUES (?, ?) "
                 "ON CONFLICT (session_id) DO NOTHING", (session_id, expires_at))

    def session_ended(self, session_id: str) -> bool:
        return self.one("SELECT 1 FROM ended_sessions WHERE session_id = ?",
                        (session_id,)) is not None

    def login_failures(self, ip: str):
        """The address's attempt count and lockout (after lock_login)."""
        return self.one("SELECT * FROM login_failures WHERE ip = ?", (ip,))

    def lock_login(self, ip: str) -> None:
        self.lock(f"login {ip}")

    def set_login_failures(self, ip: str, failures: int, window_start: float,
                           locked_until: float | None) -> None:
        self.run("INSERT INTO login_failures (ip, failures, window_start, locked_until) "
                 "VALUES (?, ?, ?, ?) ON CONFLICT (ip) DO UPDATE SET failures = "
                 "excluded.failures, window_start = excluded.window_start, "
                 "locked_until = excluded.locked_until", (ip, failures, window_start,
                                                          locked_until))

    def clear_login_failures(self, ip: str | None = None) -> int:
        """Forget failed logins (of one address, or all) -> rows removed."""
        if ip is None:
            return self.count("DELETE FROM login_failures")
        return self.count("DELETE FROM login_failures WHERE ip = ?", (ip,))

    # -- listings: one page of namespaces, tokens or devices ---------------------

    def page(self, columns: str, source: str, keys: tuple, conditions: list,
             listing: Listing, key_params: tuple = ()) -> Page:
        """Rows matching every (SQL, params) condition, ordered by `keys` (whose '?' take
        `key_params`), after the row whose keys are `listing.after`, at most
        `listing.limit` of them."""
        matching = " AND ".join(sql for sql, _ in conditions) or "1 = 1"
        params = [value for _, values in conditions for value in values]
        where, keyed = matching, [*key_params, *params]
        if listing.after is not None:
            where += f" AND ({', '.join(keys)}) {'<' if listing.descending else '>'} " \
                     f"({', '.join('?' for _ in keys)})"
            keyed += [*key_params, *listing.after]
        direction = " DESC" if listing.descending else ""
        sql = (f"SELECT {columns}, {', '.join(f'{k} AS key{i}' for i, k in enumerate(keys))} "
               f"FROM {source} WHERE {where} ORDER BY "
               f"{', '.join(key + direction for key in keys)}")
        keyed += key_params
        if listing.limit is not None:
            sql += " LIMIT ?"
            keyed.append(listing.limit + 1)
        rows = self.all(sql, keyed)
        more = listing.limit is not None and len(rows) > listing.limit
        rows = rows[:listing.limit] if more else rows
        last = [rows[-1][f"key{i}"] for i in range(len(keys))] if rows else None
        total = self.value(f"SELECT count(*) FROM {source}")
        if not conditions:
            matched = total
        elif listing.after is None and not more:  # all that match are on this first page
            matched = len(rows)
        else:
            matched = self.value(f"SELECT count(*) FROM {source} WHERE {matching}", params)
        return Page(rows, last, total, matched, more)

    def search_condition(self, listing: Listing, *columns: str) -> list:
        """Case-insensitive substring search over some columns, as a page condition."""
        if not listing.search:
            return []
        matches = " OR ".join(f"lower({column}) LIKE ? ESCAPE '!'" for column in columns)
        return [(f"({matches})", (listing.like(),) * len(columns))]

    def namespace_page(self, listing: Listing) -> Page:
        """A search sorted by name lists the names that start with it first."""
        keys, key_params = NAMESPACE_SORTS[listing.sort], ()
        if listing.search and listing.sort == "name":
            first, then = (1, 0) if listing.descending else (0, 1)
            keys = (f"CASE WHEN lower(n.name) LIKE ? ESCAPE '!' THEN {first} ELSE {then} END",
                    *keys)
            key_params = (listing.like(anywhere=False),)
        return self.page(NAMESPACE_COLUMNS, "namespaces n", keys,
                         self.search_condition(listing, "n.name"), listing, key_params)

    def token_page(self, listing: Listing, now: float) -> Page:
        conditions = self.search_condition(listing, "t.name", "t.namespace_pattern", "t.id")
        conditions += status_condition(listing, TOKEN_STATUSES, now)
        return self.page("t.*", "tokens t", TOKEN_SORTS[listing.sort], conditions, listing)

    # -- figures and whole tables ----------------------------------------------

    def stats(self) -> dict:
        row = self.one(
            "SELECT (SELECT count(*) FROM namespaces WHERE deleted_at IS NULL), "
            "(SELECT count(*) FROM namespaces WHERE deleted_at IS NOT NULL), "
            "(SELECT count(*) FROM tokens), (SELECT count(*) FROM tokens WHERE enabled = 1), "
            "(SELECT count(*) FROM objects), "
            "(SELECT CAST(coalesce(sum(size), 0) AS BIGINT) FROM blobs), "
            "(SELECT CAST(coalesce(sum(size), 0) AS BIGINT) FROM objects), "
            "(SELECT CAST(coalesce(sum(size), 0) AS BIGINT) FROM blob_versions), "
            "(SELECT count(*) FROM conflicts)")
        names = ("namespaces", "deletedNamespaces", "tokens", "enabledTokens", "objects",
                 "blobBytes", "objectBytes", "snapshotHistoryBytes", "conflicts")
        return dict(zip(names, row))

    def key_page(self, table: str, after: tuple | None, limit: int) -> list:
        """Up to `limit` rows of a table that come after the key `after` (None: from the
        start), in key order: keyset paging, so every page costs the same (copy-store)."""
        key = TABLES[table]
        where = "" if after is None else f"WHERE ({key}) > ({', '.join('?' for _ in after)})"
        return self.all_binary(f"SELECT * FROM {table} {where} ORDER BY {key} LIMIT ?",
                               (*(after or ()), limit))

    def payload_sizes(self, after: int, limit: int) -> list:
        """(id, bytes) of up to `limit` payloads after id `after`; neither store reads the
        payload bytes themselves for length()."""
        return self.all("SELECT id, length(data) FROM payloads WHERE id > ? ORDER BY id "
                        "LIMIT ?", (after, limit))

    def payload_range(self, first: int, last: int) -> list:
        return self.all_binary("SELECT * FROM payloads WHERE id >= ? AND id <= ? ORDER BY id",
                               (first, last))

    def insert_rows(self, table: str, columns: list[str], rows) -> None:
        self.many(f"INSERT INTO {table} ({', '.join(columns)}) "
                  f"VALUES ({', '.join('?' for _ in columns)})", rows)

    def row_count(self, table: str) -> int:
        return self.value(f"SELECT count(*) FROM {table}")


def text_or_none(value) -> str | None:
    """A string for a text column, or None: no other JSON type, and no NUL, which
    PostgreSQL's text cannot hold (the metadata JSON keeps the exact value)."""
    return value if isinstance(value, str) and "\0" not in value else None


def namespace_view(row) -> dict:
    metadata = json.loads(row["metadata"]) if row["metadata"] else {}
    total = row["blob_bytes"] + row["object_bytes"] + row["history_bytes"]
    used, history = quota_use(row)
    return {
        "name": row["name"], "deleted": row["deleted_at"] is not None,
        "deletedAt": rfc3339(row["deleted_at"]) if row["deleted_at"] else None,
        "createdAt": rfc3339(row["created_at"]),
        "lastWriteAt": rfc3339(row["updated_at"]) if row["updated_at"] else None,
        "format": metadata.get("format"), "revision": metadata.get("revision"),
        "deviceId": metadata.get("deviceId"), "etag": row["etag"],
        "hasSnapshot": bool(row["has_blob"]),
        "blobBytes": row["blob_bytes"], "objectCount": row["object_count"],
        "objectBytes": row["object_bytes"], "snapshotHistoryCount": row["history_count"],
        "snapshotHistoryBytes": row["history_bytes"], "versionCount": row["version_count"],
        "totalBytes": total, "usedBytes": used, "historyBytes": history}


def stored_metadata(row) -> dict:
    return json.loads(row["metadata"]) if row is not None and row["metadata"] else {}


# -- history, rollback and retention (PROTOCOL.md section 4, "Retention") ------

class RollbackRefused(Exception):
    """A rollback that cannot be done safely; the message says why."""


def manifest_paths(manifest: dict) -> set[str]:
    """The object paths a manifest's sections point at."""
    paths, stack = set(), [manifest.get("sections")]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("path"), str):
                paths.add(item["path"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return paths


def section_entries(manifest: dict | None) -> dict[str, dict]:
    """Sections flattened to 'connections', 'appSettings.general', ... -> their entry."""
    entries, stack = {}, [("", (manifest or {}).get("sections"))]
    while stack:
        name, item = stack.pop()
        if not isinstance(item, dict):
            continue
        if name and any(key in item for key in ("path", "revision", "recordCount")):
            entries[name] = item
            continue
        stack.extend((f"{name}.{key}" if name else key, value) for key, value in item.items())
    return entries


def record_count(entry: dict | None) -> int | None:
    count = (entry or {}).get("recordCount")
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def count_change(name: str, was: int | None, now: int | None) -> str:
    """'connections 3 → 5', 'forwards added (2)', 'telnetProfiles removed (had 1)'."""
    if was is None:
        return f"{name} added ({now})"
    if now is None:
        return f"{name} removed (had {was})"
    return f"{name} {was} → {now}"


def changed_values(after, before) -> dict:
    """Top-level keys whose values differ -> {"before": ..., "after": ...}."""
    after, before = (value if isinstance(value, dict) else {} for value in (after, before))
    return {key: {"before": before.get(key), "after": after.get(key)}
            for key in sorted(set(after) | set(before)) if after.get(key) != before.get(key)}


def compare_manifests(after: dict, before: dict | None) -> dict:
    """What changed from `before` to `after`, from the manifests alone (no payloads).

    A version is suspicious when a section that had records has none, or loses
    more than half: the shape of an empty or broken configuration pushed by mistake.
    """
    new, old = section_entries(after), section_entries(before)
    changed = sorted(name for name in set(new) | set(old) if new.get(name) != old.get(name))
    counts, parts, suspicious = {}, [], False
    for name in sorted(set(new) | set(old)):
        was, now = record_count(old.get(name)), record_count(new.get(name))
        if was is None and now is None:
            continue
        counts[name] = {"before": was, "after": now}
        if before is not None and was and (not now or now < was / 2):
            suspicious = True
    for name in changed:
        was, now = counts.get(name, {}).get("before"), counts.get(name, {}).get("after")
        if was != now:
            parts.append(count_change(name, was, now))
        else:
            how = "added" if name not in old else "removed" if name not in new else "changed"
            parts.append(f"{name} {how}")
    scope = (after.get("scope"), (before or {}).get("scope"))
    if scope[0] != scope[1] and before is not None:
        parts.append("scope changed")
    summary = "; ".join(parts) or ("first version" if before is None else "no section changed")
    return {"changedSections": changed, "recordCounts": counts, "suspicious": suspicious,
            "summary": summary, "sectionRevisions": changed_values(
                after.get("sectionRevisions"), (before or {}).get("sectionRevisions")),
            "scopeChange": None if scope[0] == scope[1] else
            {"before": scope[1], "after": scope[0]}}


def version_view(tx: Records, row, manifest: dict, previous: dict | None, current_etag,
                 token_names: dict) -> dict:
    return {"seq": row["seq"], "createdAt": rfc3339(row["created_at"]),
            "revision": row["revision"], "deviceId": row["device_id"], "format": row["format"],
            "etag": row["etag"], "tokenId": row["token_id"],
            "tokenName": token_names.get(row["token_id"]), "rollbackOf": row["rollback_of"],
            "current": row["etag"] == current_etag,
            "missingObjects": len(tx.missing_objects(row["namespace"],
                                                     manifest_paths(manifest))),
            "manifest": manifest, **compare_manifests(manifest, previous)}


HISTORY_PAGE_VERSIONS = 100     # the most versions one history answer holds
HISTORY_PAGE_BYTES = 2 * MiB    # about the most bytes of versions it holds (at least one)


def history_page_rows(tx: Records, namespace: str, limit: int, before: int | None) -> list:
    """The page's manifest rows, plus the one before the last (to compare it with): only
    as many as HISTORY_PAGE_BYTES holds, judged by their sizes before reading them."""
    sizes = tx.manifests(namespace, limit + 1, before, columns="seq, size")
    count, total = 0, 0
    while count < min(limit, len(sizes)) and (count == 0 or
                                              total + sizes[count][1] <= HISTORY_PAGE_BYTES):
        total += sizes[count][1]
        count += 1
    return tx.manifests(namespace, count + 1, before)


def namespace_history(tx: Records, namespace: str, limit: int = 50,
                      before: int | None = None) -> dict:
    """A page of manifest versions (newest first; with `before`, those older than that
    seq) with what changed, the current snapshot and the kept earlier snapshots. A page
    holds at most HISTORY_PAGE_VERSIONS versions and about HISTORY_PAGE_BYTES; when more
    versions follow, `nextBefore` is the `before` of the next page (else null)."""
    current = tx.namespace(namespace)
    if current is None:
        raise LookupError(f"no namespace named {namespace!r}")
    limit = min(max(limit, 1), HISTORY_PAGE_VERSIONS)
    rows = history_page_rows(tx, namespace, limit, before)
    manifests = [json.loads(row["manifest"]) for row in rows]
    token_names = {row["id"]: row["name"] for row in tx.tokens()}
    versions, size = [], 0
    for index, row in enumerate(rows[:limit]):
        view = version_view(tx, row, manifests[index],
                            manifests[index + 1] if index + 1 < len(manifests) else None,
                            current["etag"], token_names)
        size += len(json_body(view))
        if versions and size > HISTORY_PAGE_BYTES:
            break
        versions.append(view)
    more = len(rows) > len(versions)
    metadata = stored_metadata(current)
    snapshot = None
    if tx.blob(namespace) is not None:
        snapshot = {"current": True, "revision": metadata.get("revision"),
                    "deviceId": metadata.get("deviceId"), "size": metadata.get("contentLength"),
                    "sha256": metadata.get("contentHash"), "createdAt": metadata.get("uploadedAt")}
    blobs = [{"seq": row["seq"], "createdAt": rfc3339(row["created_at"]),
              "revision": row["revision"], "deviceId": row["device_id"], "size": row["size"],
              "sha256": row["sha256"], "current": False} for row in tx.blob_versions(namespace)]
    return {"namespace": namespace, "versions": versions, "snapshot": snapshot,
            "blobVersions": blobs, "hasMore": more,
            "nextBefore": versions[-1]["seq"] if more else None}


def namespace_version(tx: Records, namespace: str, seq: int) -> dict:
    """One version in full, with what changed against the version before it."""
    current, row = tx.namespace(namespace), tx.manifest(namespace, seq)
    if current is None or row is None:
        raise LookupError(f"namespace {namespace!r} has no version {seq}")
    before = tx.previous_manifest(namespace, seq)
    manifest = json.loads(row["manifest"])
    view = version_view(tx, row, manifest, json.loads(before["manifest"]) if before else None,
                        current["etag"], {r["id"]: r["name"] for r in tx.tokens()})
    view.update(namespace=namespace, previousSeq=before["seq"] if before else None,
                missingObjectPaths=tx.missing_objects(namespace, manifest_paths(manifest)))
    return view


def rollback_manifest(tx: Records, namespace: str, seq: int, now: float,
                      token_id: str | None = None, dry_run: bool = False) -> dict:
    """Make version `seq` current again: same manifest, a new etag, a new history entry."""
    row, version = tx.lock_namespace(namespace), tx.manifest(namespace, seq)
    if row is None or version is None:
        raise LookupError(f"namespace {namespace!r} has no version {seq}")
    if row["deleted_at"] is not None:
        raise RollbackRefused(f"namespace {namespace!r} is deleted; restore it first")
    target, current = json.loads(version["manifest"]), stored_metadata(row)
    missing = tx.missing_objects(namespace, manifest_paths(target))
    if missing:
        raise RollbackRefused(f"version {seq} needs {len(missing)} object(s) that are gone "
                              f"(e.g. {missing[0]!r}); nothing was changed")
    change = compare_manifests(target, current)
    if dry_run:
        return {"ok": True, "dryRun": True, "rolledBackTo": seq, **change}
    metadata = {**target, "exists": True, "etag": new_etag(),
                "contentLength": current.get("contentLength", 0)}
    metadata.pop("contentHash", None)
    if "contentHash" in current:
        metadata["contentHash"] = current["contentHash"]
    tx.save_metadata(namespace, metadata, now)
    new_seq = tx.record_manifest(namespace, metadata, now, token_id, rollback_of=seq)
    log.info("namespace %r rolled back to version %d (new version %d)", namespace, seq, new_seq)
    return {"ok": True, "seq": new_seq, "rolledBackTo": seq, "etag": metadata["etag"], **change}


def rollback_blob(tx: Records, namespace: str, seq: int, now: float, keep: int,
                  dry_run: bool = False) -> dict:
    """Make a kept snapshot version current again, with a new etag."""
    row, version = tx.lock_namespace(namespace), tx.blob_version(namespace, seq)
    if row is None or version is None:
        raise LookupError(f"namespace {namespace!r} has no snapshot version {seq}")
    if row["deleted_at"] is not None:
        raise RollbackRefused(f"namespace {namespace!r} is deleted; restore it first")
    metadata = stored_metadata(row)
    if dry_run:
        return {"ok": True, "dryRun": True, "rolledBackToBlob": seq,
                "summary": f"snapshot revision {metadata.get('revision')} → "
                           f"{version['revision']} ({version['size']} bytes)"}
    tx.keep_blob_version(namespace, max(keep, 1) + 1)
    tx.restore_blob_version(namespace, seq, now)
    section_revisions = version["section_revisions"]
    set_blob_metadata(metadata, revision=version["revision"], digest=version["sha256"],
                      size=version["size"], uploaded=version["created_at"],
                      content_type=version["content_type"], device_id=version["device_id"],
                      section_revisions=section_revisions and json.loads(section_revisions))
    tx.save_metadata(namespace, metadata, now)
    log.info("namespace %r snapshot rolled back to version %d", namespace, seq)
    return {"ok": True, "rolledBackToBlob": seq, "etag": metadata["etag"],
            "revision": metadata.get("revision")}


def set_blob_metadata(metadata: dict, *, revision, digest, size, uploaded, content_type,
                      device_id, section_revisions) -> None:
    """The metadata fields a snapshot owns; format, sections and scope are kept. A field
    with no value (not sent, or not stored: STORE_METADATA_*) is left out, never null."""
    metadata.update(exists=True, etag=new_etag(), uploadedAt=rfc3339(uploaded),
                    contentLength=size)
    for key, value in (("revision", revision), ("contentHash", digest),
                       ("contentType", content_type), ("deviceId", device_id),
                       ("sectionRevisions", section_revisions)):
        metadata.pop(key, None)
        if value is not None and value != "":
            metadata[key] = value


def drop_unkept(metadata: dict, unkept: tuple[str, ...]) -> dict:
    """Leave out the fields STORE_METADATA_*=false says never to store."""
    for field in unkept:
        metadata.pop(field, None)
    return metadata


PRUNE_BATCH = 32  # manifests and objects removed in one transaction


def prune_some(tx: Records, names: list[str], cutoff: float, judged_until: float,
               totals: dict) -> None:
    """Retention for the namespaces at the end of `names` until PRUNE_BATCH rows were
    removed (one transaction); each namespace done is taken off the list."""
    budget = PRUNE_BATCH
    while names and budget > 0:
        row = tx.lock_namespace(names[-1])
        if row is None or row["deleted_at"] is not None:
            names.pop()
            continue
        removed = tx.prune_namespace(names[-1], cutoff, judged_until, budget)
        if not removed.pop("more"):
            names.pop()
        for key, value in removed.items():
            totals[key] += value
        budget -= max(1, removed["objectsRemoved"] + removed["manifestsRemoved"])


def collect_garbage(store: "Store", retention: int, now: float | None = None) -> dict | None:
    """Retention over every namespace that is not soft-deleted -> what was removed, or
    None when another process is applying it right now.

    Only namespaces where something may have expired are visited, in small transactions
    with a pause after each (as long as it took), so that sync writes keep their turn."""
    cutoff = (time.time() if now is None else now) - retention
    totals = {"objectsRemoved": 0, "bytesReclaimed": 0, "manifestsRemoved": 0}
    with store.exclusively("retention") as ours:
        if not ours:
            return None
        with store.read() as tx:
            judged_until = tx.retention_mark()
            names = tx.namespaces_to_prune(cutoff, judged_until)
        log.debug("retention: %d namespaces to look at", len(names))
        names.reverse()
        while names:
            started = time.monotonic()
            with store.write() as tx:
                prune_some(tx, names, cutoff, judged_until, totals)
            store.checkpoint()  # else a sync write's commit may have to copy what we wrote
            time.sleep(min(time.monotonic() - started, 0.1))
        with store.write() as tx:
            tx.set_setting("retention_judged_until", repr(cutoff))
    store.release_free_pages()
    if totals["objectsRemoved"] or totals["manifestsRemoved"]:
        log.info("retention: removed %d objects (%d bytes) and %d old manifests",
                 totals["objectsRemoved"], totals["bytesReclaimed"], totals["manifestsRemoved"])
    return totals


# The newest versions of a namespace's history are kept whatever MAX_HISTORY_BYTES says:
# the current manifest and the three before it (a few syncs back). At most 4 x 256 KiB.
KEEP_NEWEST_VERSIONS = 4
TRIM_LOG_SECONDS = 60


class TrimNotes:
    """Trims of one namespace's history are logged at most once a TRIM_LOG_SECONDS:
    a flooding writer trims on every write and must not flood the log as well."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: dict[str, list] = {}  # namespace -> [next line, manifests, snapshots, bytes]

    def note(self, namespace: str, trimmed: dict, max_bytes: int) -> None:
        with self._lock:
            pending = self._pending.setdefault(namespace, [0.0, 0, 0, 0])
            pending[1:] = [pending[1] + trimmed["manifests"], pending[2] + trimmed["snapshots"],
                           pending[3] + trimmed["bytes"]]
            if time.monotonic() < pending[0]:
                return
            manifests, snapshots, freed = pending[1:]
            self._pending[namespace] = [time.monotonic() + TRIM_LOG_SECONDS, 0, 0, 0]
        # INFO, not WARNING: RepeatLimit keeps one warning per template per interval and
        # would drop other namespaces' summaries; this class already limits per namespace.
        log.info("history of namespace %r reached MAX_HISTORY_BYTES (%d bytes): dropped "
                 "its %d oldest manifests and %d oldest kept snapshots (%d bytes) since "
                 "the last such line; raise MAX_HISTORY_BYTES to keep more", namespace,
                 max_bytes, manifests, snapshots, freed)


trim_notes = TrimNotes()


def trim_history(tx: Records, namespace: str, max_bytes: int) -> int:
    """Bound the namespace's history in bytes, in the write's own transaction (0: bounded
    by age only) -> versions dropped."""
    if not max_bytes:
        return 0
    trimmed = tx.trim_history(namespace, max_bytes, KEEP_NEWEST_VERSIONS)
    if trimmed["bytes"]:
        trim_notes.note(namespace, trimmed, max_bytes)
    return trimmed["manifests"] + trimmed["snapshots"]


# -- encryption keys (operator commands) ----------------------------------------

def key_opens_check(sealer: Sealer, stored_check: str) -> bool:
    """Whether the sealer's key opens the key check stored in the settings table."""
    try:
        sealer.open(bytes.fromhex(stored_check), sealer.key_id, KEY_CHECK_CONTEXT)
        return True
    except SealError:
        return False


def check_key(store: "Store", sealer: Sealer) -> None:
    """Refuse a wrong or missing key at startup rather than failing every read later."""
    with store.write() as tx:
        tx.lock("settings")  # two processes starting with different keys: one key wins
        stored_id, stored_check = tx.setting("key_id"), tx.setting("key_check")
        rotation = tx.setting("rotation_target")
        if stored_check is None and sealer.enabled:
            store_key_check(tx, sealer)
            stored_id = sealer.key_id
    if rotation is not None:
        raise StoreError(f"a key rotation to key id {rotation} was interrupted; run oxsync "
                         "rotate-key again with the same keys to finish it")
    if stored_check is not None:
        if not sealer.enabled:
            raise StoreError(f"{store.describe()} holds payloads sealed with key {stored_id}; "
                             "start oxsync with ENCRYPTION_KEY set to that key")
        if not key_opens_check(sealer, stored_check):
            raise StoreError(f"ENCRYPTION_KEY (key id {sealer.key_id}) is not the key that "
                             f"sealed {store.describe()} (key id {stored_id})")
    if sealer.enabled:
        with store.read() as tx:
            plain = tx.plaintext_payload_count()
        if plain:
            log.warning("%d payloads were stored before encryption was enabled and are still "
                        "plaintext; seal them with: oxsync encrypt-existing", plain)
    else:
        log.warning("ENCRYPTION_KEY is not set: payloads are stored in plaintext")


def reseal_payloads(store: "Store", old: Sealer, new: Sealer, key_id: str | None,
                    batch: int = 16) -> int:
    """Open every payload sealed with `key_id` (None: plaintext) and seal it with `new`.

    One transaction per batch: a crash loses nothing, and running again resumes
    where it stopped, because finished rows no longer carry `key_id`.
    """
    done = 0
    for table in PAYLOAD_OWNERS:
        kind = "object" if table == "objects" else "blob"
        while True:
            with store.write() as tx, store.erasing(tx.db):
                rows = tx.payloads_sealed_with(table, key_id, batch)
                for row in rows:
                    context = payload_context(row["namespace"], kind, row["path"])
                    data = old.open(tx.read_payload(row["id"]), row["key_id"], context)
                    tx.store_payload(*new.seal(data, context), payload_id=row["id"])
            done += len(rows)
            if not rows:
                break
    return done


def store_key_check(tx: Records, sealer: Sealer) -> None:
    check, _ = sealer.seal(KEY_CHECK, KEY_CHECK_CONTEXT)
    tx.set_setting("key_id", sealer.key_id)
    tx.set_setting("key_check", check.hex())


def rotate_key(store: "Store", old_key: bytes, new_key: bytes) -> int:
    """Re-seal every payload from the old key to the new one; resumable."""
    old, new = Sealer(old_key), Sealer(new_key)
    with store.write() as tx:
        tx.lock("settings")
        target = tx.setting("rotation_target")
        if target not in (None, new.key_id):
            raise StoreError(f"an earlier rotation to key id {target} was interrupted; run "
                             "rotate-key again with that new key to finish it")
        if target is None:
            if tx.setting("key_id") == new.key_id:
                return 0
            check_key_opens(store, tx, old)
            tx.set_setting("rotation_target", new.key_id)
    count = reseal_payloads(store, old, new, old.key_id)
    store.rewrite()
    with store.write() as tx:
        store_key_check(tx, new)
        tx.set_setting("rotation_target", None)
    return count


def check_key_opens(store: "Store", tx: Records, sealer: Sealer) -> None:
    stored = tx.setting("key_check")
    if stored is None:
        raise StoreError(f"{store.describe()} is not encrypted yet; use encrypt-existing")
    if not key_opens_check(sealer, stored):
        raise StoreError(f"the current key (id {sealer.key_id}) is not the key that sealed "
                         f"{store.describe()} (key id {tx.setting('key_id')})")


def encrypt_existing(store: "Store", key: bytes) -> int:
    """Seal every plaintext payload with `key`; resumable, safe while the server runs."""
    sealer = Sealer(key)
    check_key(store, sealer)
    count = reseal_payloads(store, Sealer(None), sealer, None)
    store.rewrite()  # old plaintext may linger in free space the server left earlier
    return count


# -- copies: copy-store, and backups of a SQLite file -------------------------------

COPY_ROWS = 1000  # rows per page read, and per transaction written, by copy-store
COPY_BYTES = 8 * MiB  # ...or fewer payloads, when their bytes add up to this
COPY_MARKER = "copy-store unfinished"  # a settings key: this database is a copy being made


class Progress:
    """How far a long command has got, on stderr, one step (a table) at a time: on a
    terminal one line per step redrawn in place (count, bytes, rate, time left), otherwise
    one line per step when it ends, as pg_dump --verbose or rsync --info=progress2 do."""

    def __init__(self, command: str, stream=None):
        self.command, self.stream = command, stream or sys.stderr
        self.live = self.stream.isatty()

    def note(self, text: str) -> None:
        print(f"{self.command}: {text}", file=self.stream, flush=True)

    def begin(self, step: str, total: int | None = None, unit: str = "rows") -> None:
        self.step, self.total, self.unit, self.count, self.bytes = step, total, unit, 0, 0
        self.started = self.shown = time.monotonic()
        self.show(final=False)

    def add(self, count: int, size: int) -> None:
        self.count, self.bytes = self.count + count, self.bytes + size
        if self.live and time.monotonic() - self.shown >= 0.25:
            self.show(final=False)

    def end(self) -> None:
        self.show(final=True)

    def show(self, final: bool) -> None:
        if not (final or self.live):
            return
        self.shown = time.monotonic()
        seconds = max(self.shown - self.started, 1e-3)
        line = f"{self.command}: {self.step}: {self.count:,}"
        if self.total and not final:
            line += f" of {self.total:,}"
        line += (f" {self.unit}, {self.bytes / 1e6:,.1f} MB in {seconds:.1f} s ("
                 f"{self.count / seconds:,.0f} {self.unit}/s, {self.bytes / 1e6 / seconds:,.1f} "
                 "MB/s")
        if self.total and self.count and not final:
            line += f", {max(self.total - self.count, 0) * seconds / self.count:.0f} s left"
        line += ")"
        self.stream.write(("\r\033[K" if self.live else "") + line + ("\n" if final else ""))
        self.stream.flush()


def row_digest(row) -> tuple[int, int]:
    """(SHA-256 of the row as a number, its bytes): each value encoded as its kind, length
    and bytes, the same on both stores for equal data (no repr() of payload bytes)."""
    digest, size = hashlib.sha256(), 0
    for value in row:
        if isinstance(value, str):
            kind, data = b"s", value.encode()
        elif isinstance(value, (bytes, bytearray, memoryview)):
            kind, data = b"b", value
        else:  # None, int or float: repr() is exact
            kind, data = b"v", repr(value).encode()
        size += len(data)
        digest.update(kind + len(data).to_bytes(8, "big"))
        digest.update(data)
    return int.from_bytes(digest.digest(), "big"), size


def add_rows(summary: list, rows) -> int:
    """Add rows to a table's [rows, digest, bytes] -> their bytes. The digest is the sum of
    the rows' digests modulo 2**256, so it does not depend on the order rows come in (the
    stores may sort text keys differently)."""
    added = 0
    for row in rows:
        digest, size = row_digest(row)
        summary[1] = (summary[1] + digest) % (1 << 256)
        added += size
    summary[0] += len(rows)
    summary[2] += added
    return added


def table_batches(tx: Records, table: str):
    """Every row of a table in key order, as lists of at most COPY_ROWS rows (payloads: of
    at most COPY_BYTES, or one larger payload), each page found by its key, never by an
    offset: the cost is linear in the table's size and memory stays bounded."""
    if table == "payloads":
        yield from payload_batches(tx)
        return
    columns, after = TABLES[table].split(", "), None
    while True:
        rows = tx.key_page(table, after, COPY_ROWS)
        if rows:
            yield rows
        if len(rows) < COPY_ROWS:
            return
        after = tuple(rows[-1][column] for column in columns)


def read_ahead(batches, depth: int = 2):
    """The items of an iterator, made by a thread of its own at most `depth` items ahead:
    SQLite, psycopg and hashlib let go of the GIL, so reading the next batch overlaps
    writing and digesting this one. Close it (contextlib.closing) to stop the thread."""
    ahead, stop, end = queue.Queue(depth), threading.Event(), object()

    def produce():
        try:
            for item in batches:
                ahead.put(item)
                if stop.is_set():
                    return
            ahead.put(end)
        except BaseException as error:  # noqa: BLE001 - raised again by the consumer
            ahead.put(error)
    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock its put(), then let it see `stop`
            with contextlib.suppress(queue.Empty):
                ahead.get(timeout=0.05)


def payload_batches(tx: Records):
    after = -(1 << 63)
    while True:
        sizes = tx.payload_sizes(after, COPY_ROWS)
        first, total = None, 0
        for payload_id, size in sizes:
            if first is not None and total + (size or 0) > COPY_BYTES:
                yield tx.payload_range(first, after)
                first, total = None, 0
            first = payload_id if first is None else first
            after, total = payload_id, total + (size or 0)
        if first is not None:
            yield tx.payload_range(first, after)
        if len(sizes) < COPY_ROWS:
            return


def copy_store(source: "Store", target: "Store", progress: Progress,
               empty_on_failure: bool = True) -> dict[str, int]:
    """Copy every row into an empty store, sealed payloads as they are (no key needed):
    each table read once, in key order, and written a batch per transaction, its digest
    taken on the way; then one streaming read of the target checks every table -> rows per
    table. Until that check has passed a settings row marks the target as unfinished (a
    server refuses it, the next copy-store starts over); a failed copy is emptied again."""
    claim_empty_target(target, progress)
    try:
        marker = (COPY_MARKER, rfc3339(time.time()))
        with target.write() as tx:
            tx.set_setting(*marker)
        with source.read(snapshot=True) as old:
            expected = {table: copy_table(old, target, table, progress) for table in TABLES}
        check_copy(target, expected, marker, progress)
        with target.write() as tx:
            tx.set_setting(COPY_MARKER, None)
            target.after_copy(tx)
    except BaseException:
        if empty_on_failure:
            with contextlib.suppress(Exception):
                target.empty()
        raise
    return {table: summary[0] for table, summary in expected.items()}


def claim_empty_target(target: "Store", progress: Progress) -> None:
    """Refuse a target with data in it; empty one that a copy-store left unfinished."""
    with target.read() as tx:
        unfinished = tx.setting(COPY_MARKER)
        filled = [table for table in TABLES if tx.row_count(table)]
    if unfinished:
        progress.note(f"emptying {target.describe()}: a copy-store into it begun at "
                      f"{unfinished} did not finish")
        target.empty()
    elif filled:
        raise not_empty(target.describe(), filled)


def not_empty(target: str, filled: list[str]) -> StoreError:
    return StoreError(f"{target} is not empty (it has {', '.join(filled)}); copy-store only "
                      "fills an empty database")


def copy_table(old: Records, target: "Store", table: str, progress: Progress) -> list:
    """One table into the target, a transaction per batch -> its [rows, digest, bytes]."""
    progress.begin(table, old.row_count(table) if progress.live else None)
    summary = [0, 0, 0]
    digested = ((rows, add_rows(summary, rows)) for rows in table_batches(old, table))
    with contextlib.closing(read_ahead(digested)) as batches:  # read and digest meanwhile
        for rows, size in batches:
            with target.write() as new:
                new.insert_rows(table, rows[0].keys(), [tuple(row) for row in rows])
            progress.add(len(rows), size)
    progress.end()
    return summary


def check_copy(target: "Store", expected: dict, marker: tuple, progress: Progress) -> None:
    """Read the whole target once and compare each table with what was copied into it."""
    expected = dict(expected, settings=list(expected["settings"]))
    add_rows(expected["settings"], [marker])
    progress.begin("check", sum(summary[0] for summary in expected.values())
                   if progress.live else None)
    with target.read(snapshot=True) as copy:
        for table in TABLES:
            got = [0, 0, 0]
            with contextlib.closing(read_ahead(table_batches(copy, table))) as batches:
                for rows in batches:
                    progress.add(len(rows), add_rows(got, rows))
            if got != expected[table]:
                raise StoreError(f"the copy of table {table} does not match the original "
                                 f"({got[0]} rows of {expected[table][0]}); check "
                                 f"{target.describe()}")
    progress.end()


def refuse_unfinished_copy(store: "Store") -> None:
    with store.read() as tx:
        begun = tx.setting(COPY_MARKER)
    if begun:
        raise StoreError(f"{store.describe()} holds a copy-store begun at {begun} that did "
                         "not finish; run copy-store into it again (it starts over)")


def fsync_path(path: str) -> None:
    """fsync a file or a folder by name (a folder's fsync makes its entries durable)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish_durably(partial: str, target: str) -> None:
    """Give the finished file `partial` the name `target` so that a power cut leaves
    either the old `target` or the whole new one: POSIX promises neither the bytes nor
    the rename until the file and then its folder are fsynced."""
    fsync_path(partial)
    os.replace(partial, target)
    fsync_path(os.path.dirname(os.path.abspath(target)))


def make_folder_durably(folder: str, mode: int = 0o777) -> None:
    """os.makedirs(folder, mode, exist_ok=True), and each folder it makes is fsynced into
    its parent: a file published in a new folder is lost with the folder's name."""
    folder = os.path.abspath(folder)
    if os.path.isdir(folder):
        return
    make_folder_durably(os.path.dirname(folder))
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, mode)
    fsync_path(os.path.dirname(folder))


def write_durably(path: str, data: bytes) -> None:
    """Write a small file (a sidecar) whole or not at all, durably."""
    partial = path + ".partial"
    with open(partial, "wb") as file:
        file.write(data)
    publish_durably(partial, path)


def file_sha256(path: str, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    if progress:
        progress.begin("sha256", os.path.getsize(path) // MiB, unit="MiB")
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(MiB), b""):
            digest.update(chunk)
            if progress:
                progress.add(1, len(chunk))
    if progress:
        progress.end()
    return digest.hexdigest()


def remove_partial(partial: str) -> None:
    for leftover in (partial, partial + "-wal", partial + "-shm", partial + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)


def build_file(target: str, build) -> None:
    """build(partial) makes the file under the temporary name TARGET.partial next to it,
    which becomes `target` (durably) only when build returned: an interrupted run leaves no
    file at `target`, and its stale partial is removed by the next run."""
    partial = target + ".partial"
    try:
        remove_partial(partial)
        build(partial)
        publish_durably(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_partial(partial)
        raise


def copy_to_sqlite(source: "Store", target: str, progress: Progress) -> dict[str, int]:
    """copy-store into a new SQLite file (an existing one must be empty and unused; it is
    replaced) -> rows per table."""
    unused = None
    if os.path.exists(target):
        refuse_filled_file(target)
        unused = SQLiteStore(target)
        try:
            unused.hold(exclusive=True)  # until replaced: no server may start on it
        finally:
            unused.close()
    counts = {}

    def build(partial: str) -> None:
        copy = SQLiteStore(partial, unjournaled=True)
        try:
            counts.update(copy_store(source, copy, progress, empty_on_failure=False))
        finally:
            copy.close()
    try:
        build_file(target, build)
    except OSError as error:
        raise StoreError(f"cannot write {target}: {error.strerror or error}") from None
    finally:
        if unused is not None:
            unused.release()
    return counts


def refuse_filled_file(path: str) -> None:
    """An existing SQLite target must be an empty oxsync database; it is only read here."""
    try:
        with contextlib.closing(sqlite3.connect(
                f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro", uri=True)) as db:
            filled = [table for table in TABLES
                      if db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()]
    except sqlite3.Error as error:
        raise StoreError(f"{path} exists and is not an empty oxsync database ({error}); "
                         "copy-store only fills an empty database") from None
    if filled:
        raise not_empty(path, filled)


def backup_database(store: "Store", target: str, progress: Progress) -> str:
    """An online copy in one SQLite file (the server keeps serving) plus FILE.sha256.
    A missing folder is created, readable by its owner only."""
    if store.local_dir:
        live = os.path.realpath(store.describe())
        if os.path.realpath(target) in (live, live + "-wal", live + "-shm", live + "-journal"):
            raise StoreError(f"{target} is the live database itself; back up to another file")

    def build(partial: str) -> None:
        store.copy_to_file(partial, progress)
        with contextlib.closing(sqlite3.connect(partial)) as copy:
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
    try:
        make_folder_durably(os.path.dirname(os.path.abspath(target)), mode=0o700)
        build_file(target, build)
        digest = file_sha256(target, progress)
        write_durably(target + ".sha256", f"{digest}  {os.path.basename(target)}\n".encode())
    except (OSError, sqlite3.Error) as error:
        raise StoreError(f"cannot write the backup {target}: {error}") from None
    return digest


def verify_backup(path: str) -> str:
    """Check the sidecar digest and SQLite's integrity check -> a one-line summary."""
    if not os.path.isfile(path):
        raise StoreError(f"no backup file at {path}")
    try:
        expected = open(path + ".sha256").read().split()[0]
    except (OSError, IndexError):
        raise StoreError(f"{path}.sha256 is missing or empty; cannot verify {path}") from None
    if file_sha256(path) != expected:
        raise StoreError(f"{path} does not match its .sha256 (damaged or changed)")
    try:
        db = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro",
                             uri=True)
        try:
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            counts = [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                      for t in ("namespaces", "objects", "tokens")]
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{path} is not a readable oxsync database: {error}") from None
    if result != "ok":
        raise StoreError(f"{path} fails SQLite's integrity check: {result}")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} has schema {version}, newer than this oxsync ({SCHEMA_VERSION})")
    return (f"{path}: ok (sha256 matches, integrity ok, schema {version}, {counts[0]} "
            f"namespaces, {counts[1]} objects, {counts[2]} tokens)")


def restore_database(source: str, target: str, force: bool) -> None:
    verify_backup(source)
    if os.path.exists(target) and not force:
        raise StoreError(f"{target} exists (a server may be using it); stop the server and "
                         "pass --force to replace it with the backup")
    if os.path.exists(target):
        SQLiteStore(target).hold(exclusive=True)
    backup = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(source))}?mode=ro",
                             uri=True)
    live = sqlite3.connect(target, timeout=30)
    try:
        live.execute("PRAGMA synchronous = EXTRA")  # EXTRA: the journal's deletion is durable
        backup.backup(live)
    finally:
        live.close()
        backup.close()
    fsync_path(target)  # a new file's name too: closing checkpointed and removed the WAL
    fsync_path(os.path.dirname(os.path.abspath(target)))


# -- the stores: what differs between SQLite and PostgreSQL lives below ----------

# LOCK_FREE: a request thread takes no threading.Lock for bookkeeping (the connection
# pools, connection deadlines, token use, metrics). When the GIL is taken from a thread
# that holds such a lock, every other request thread queues behind it until that thread
# gets the GIL back: with 16 busy connections those locks cost more than the rest of a
# GET (13.7k GET/s with them, 17-19k without). Appending to or popping from a list or
# deque, and setting or dropping a dict key, are atomic, so these structures use only those.
MAX_IDLE_CONNECTIONS = 256  # idle connections kept; one per concurrent request is needed
CACHED_READS = 256  # results of Store.cached() kept (each at most a namespace's metadata)


class Store:
    """A database: transactions as Records, a read cache, locks and upkeep.

    read() and write() yield Records. A write commits when its block ends without an
    exception and rolls back otherwise; writers of one namespace take turns through
    Records.lock_namespace (SQLite: there is one writer anyway). Each store also says
    describe() (the database in words, never with a password) and change_stamp() (a
    value that differs after any process commits a change; None: unknown).
    """

    local_dir: str | None = None  # a folder whose free disk space bounds writes

    def __init__(self):
        self._cache: dict = {}

    def cached(self, key, load):
        """load(records) -> a result, kept and reused until any process commits a change.

        None is never kept (an unknown token must not fill memory).
        """
        stamp = self.change_stamp()
        hit = self._cache.get(key)
        if hit is not None and stamp is not None and hit[0] == stamp:
            return hit[1]
        with self.read() as tx:
            value = load(tx)
        if value is not None and stamp is not None:
            if len(self._cache) >= CACHED_READS:
                self._cache.clear()
            self._cache[key] = (stamp, value)
        return value

    @contextlib.contextmanager
    def exclusively(self, name: str):
        """-> True while this process alone does `name` (retention), False when another
        process is doing it right now."""
        yield True

    def erasing(self, db):
        """Deletions inside overwrite the freed bytes where the store can do that."""
        return contextlib.nullcontext()

    def binary_cursor(self, db):
        return db.cursor()

    def after_copy(self, tx: "Records") -> None:
        """Counters the store keeps apart from its rows, set after copy-store filled it."""

    def checkpoint(self, final: bool = False) -> None:
        """Upkeep the housekeeping thread runs every few seconds (and once at shutdown)."""

    def release_free_pages(self) -> None:
        """Give space freed by deletions back (SQLite; PostgreSQL's autovacuum does it)."""

    def copy_to_file(self, path: str, progress: Progress) -> None:
        """Everything into a new SQLite file (a backup), with copy-store's checks."""
        copy = SQLiteStore(path, unjournaled=True)
        try:
            copy_store(self, copy, progress, empty_on_failure=False)
        finally:
            copy.close()

    def empty(self) -> None:
        """Remove every row (what a copy-store that failed had written)."""
        with self.write() as tx:
            for table in reversed(TABLES):
                tx.run(f"DELETE FROM {table}")


class SQLiteStore(Store):
    """The SQLite file: a pool of reader connections and one writer behind a lock.

    WAL mode lets readers run while one transaction writes. Writers queue on a
    Python lock instead of SQLite's sleeping busy handler, so concurrent
    uploads are served in arrival order without latency spikes; other
    processes (the CLI) still wait on SQLite's busy timeout. The server's store
    (`serving`) moves most WAL checkpoints off the request path (its housekeeping
    thread calls checkpoint()) and caches reads (cached()).
    """

    WAL_RESTART_FRAMES = 4096  # pages (16 MiB of 4 KiB pages); see __init__
    WAL_INDEX_HEADER = 48  # bytes; https://sqlite.org/walformat.html, "The WAL-Index Header"

    def __init__(self, path: str, serving: bool = False, unjournaled: bool = False):
        super().__init__()
        self.path = path
        # A serving store checkpoints in the background, but a PASSIVE checkpoint never
        # catches up with writers that never pause, and then the WAL never starts over:
        # 12 s of 4 KiB PUTs grew it to 1.1 GB, and every read slowed as SQLite searched
        # its index. So the commit that takes it past WAL_RESTART_FRAMES still finishes
        # the job itself, with no writer of ours running, and the next write starts over.
        self._autocheckpoint = self.WAL_RESTART_FRAMES if serving else 1000
        self.local_dir = os.path.dirname(os.path.abspath(path))
        try:
            make_folder_durably(self.local_dir)
        except OSError as error:
            raise StoreError(f"cannot create the database folder {self.local_dir}: "
                             f"{error.strerror}; choose another --db-path") from None
        self._write_lock = threading.Lock()
        # Group commit (see durable()): commits made, commits an fsync has covered.
        self._commits = self._durable_through = 0
        self._syncing, self._synced = False, threading.Condition()
        self._wal_inode = None  # the WAL whose folder entry has been fsynced
        self._readers: list[sqlite3.Connection] = []
        self._writer = self._connect()
        self._unjournaled = unjournaled
        if unjournaled:
            # A copy under a temporary name, thrown away unless finished: written once, with
            # no journal and no syncs (publish_durably syncs it when it is complete).
            self._writer.execute("PRAGMA journal_mode = OFF")
            self._writer.execute("PRAGMA synchronous = OFF")
        migrate(self)
        self._wal_file, self._wal_index = self._map_wal_index() if serving else (None, None)

    def describe(self) -> str:
        return self.path

    def hold(self, exclusive: bool) -> None:
        """An advisory lock on the file, held until exit: the server holds it shared, and
        rotate-key and restore need it alone, so they refuse while a server runs."""
        self._lock_file = open(self.path, "rb")
        try:
            fcntl.flock(self._lock_file, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                        | fcntl.LOCK_NB)
        except OSError:
            raise StoreError(f"a server is running on {self.path}; stop it first") from None

    def _map_wal_index(self):
        """SQLite's WAL index, the "-shm" file that every connection of every process
        shares (https://sqlite.org/walformat.html): its header is rewritten by every
        commit that changes the database. -> (open file, read-only map of the header).

        Both stay open until close(), after the connections: closing any descriptor of
        a file drops every POSIX lock this process holds on it, SQLite's included, and
        another process would then reset the file under our map (SIGBUS)."""
        try:
            file = open(self.path + "-shm", "rb")
        except OSError:
            return None, None  # then nothing is cached
        try:
            return file, mmap.mmap(file.fileno(), self.WAL_INDEX_HEADER,
                                   access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return file, None

    def change_stamp(self):
        """One memory read of the WAL index header. A statement would cost far more
        under load than its own few microseconds: SQLite lets go of the GIL while it
        runs, and getting the GIL back among many busy request threads is what made a
        GET slow."""
        return self._wal_index[:self.WAL_INDEX_HEADER] if self._wal_index else None

    def _connect(self, reader: bool = False) -> sqlite3.Connection:
        """A connection; the writer also sets the file's modes (readers inherit them)."""
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                 check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 30000")
            if reader:
                db.execute("PRAGMA cache_size = -1024")  # 1 MiB each; there may be many
                return db
            # Takes effect only on a new, empty file, and only before it switches to WAL.
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise StoreError(f"{self.path}: SQLite could not switch to WAL mode")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(f"PRAGMA wal_autocheckpoint = {self._autocheckpoint}")
            # FAST zeroes deleted rows inside pages at no extra I/O; purge, encrypt-existing
            # and rotate-key switch to ON (see erasing()), which also zeroes freed pages.
            db.execute("PRAGMA secure_delete = FAST")
            db.execute("PRAGMA journal_size_limit = 67108864")
            return db
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot open the database {self.path}: {error}") from None

    # -- schema version and SQL --------------------------------------------------

    def sql(self, statement: str) -> str:
        return statement

    def schema_version(self, tx: "Records") -> int:
        return tx.value("PRAGMA user_version")

    def set_schema_version(self, tx: "Records", version: int) -> None:
        tx.run(f"PRAGMA user_version = {int(version)}")

    def run_ddl(self, tx: "Records", script: str) -> None:
        for statement in script.split(";\n"):
            if statement.strip():
                tx.run(statement)

    def lock(self, db, name: str) -> None:
        """Nothing to do: a write transaction is the only writer (BEGIN IMMEDIATE)."""

    # -- transactions --------------------------------------------------------------

    @contextlib.contextmanager
    def read(self, snapshot: bool = False):
        """A reader; with `snapshot`, its statements share one read transaction
        (needed when a row is looked up and its payload read in separate steps)."""
        try:
            db = self._readers.pop()  # list pop and append are atomic: no lock (LOCK_FREE)
        except IndexError:
            db = self._connect(reader=True)
        try:
            with self._errors():
                if snapshot:
                    db.execute("BEGIN")
                try:
                    yield Records(self, db)
                finally:
                    if db.in_transaction:
                        db.execute("COMMIT")
        finally:
            if len(self._readers) < MAX_IDLE_CONNECTIONS:
                self._readers.append(db)
            else:
                db.close()

    @contextlib.contextmanager
    def write(self):
        """The one write transaction (BEGIN IMMEDIATE); it ends once the commit is durable."""
        with self._write_lock, self._errors():
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                yield Records(self, db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
            self._commits += 1
            commit = self._commits
        self.durable(commit)

    def durable(self, commit: int | None = None) -> None:
        """Return once an fsync of the WAL has covered commit number `commit` (default:
        every commit so far): group commit.

        SQLite runs with synchronous = NORMAL, so a COMMIT only writes the WAL; the
        writer lock is let go before the fsync, and the next writers commit while it
        runs. One thread syncs at a time and takes along every commit made before it
        started; the others wait for a sync that covers theirs. That keeps SQLite's
        NORMAL consistency (a checkpoint syncs the WAL before it copies pages into the
        database, and syncs the database before the WAL starts over), and adds what
        NORMAL lacks: no answer before the commit's WAL frames are on disk. A reader may
        see a commit while its fsync runs; etags are random UUIDs, so one lost to a power
        cut is never handed out again for other bytes."""
        if self._unjournaled:
            return  # a copy is made durable once, when it is published
        commit = self._commits if commit is None else commit
        with self._synced:
            while self._durable_through < commit:
                if self._syncing:
                    self._synced.wait()
                    continue
                self._syncing, covers = True, self._commits
                self._synced.release()
                try:
                    self._sync_wal()
                finally:
                    self._synced.acquire()
                    self._syncing = False
                    self._synced.notify_all()
                self._durable_through = max(self._durable_through, covers)

    def _sync_wal(self) -> None:
        """fsync the WAL, and its folder when the WAL is a new file (its name is durable
        only then). Opened by name each time: SQLite deletes the WAL when the last
        connection closes, and a later one makes a new file."""
        try:
            descriptor = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            fsync_path(self.path)  # no WAL: every commit is in the database file
            fsync_path(self.local_dir)
            return
        try:
            os.fdatasync(descriptor)  # data and size; SQLite's own WAL syncs are the same
            inode = os.fstat(descriptor).st_ino
        finally:
            os.close(descriptor)
        if inode != self._wal_inode:
            fsync_path(self.local_dir)  # the database file's own name too, on first use
            self._wal_inode = inode

    @contextlib.contextmanager
    def _errors(self):
        """A full disk -> StoreFull, a database locked too long -> StoreUnavailable."""
        try:
            yield
        except sqlite3.OperationalError as error:
            if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise StoreFull(f"the disk holding {self.path} is full") from error
            if getattr(error, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY,
                                                            sqlite3.SQLITE_LOCKED):
                raise StoreUnavailable(f"{self.path} is locked by another process") from error
            raise

    # -- payloads: a large one is streamed through blob I/O ---------------------------

    def write_payload(self, db, stored, key_id: str | None, payload_id: int | None) -> int:
        """A large payload goes in as a zeroblob filled through blob I/O, so SQLite never
        builds the whole record in memory (that works because data is its last column)."""
        small = len(stored) <= MiB
        value, placeholder = (stored, "?") if small else (len(stored), "zeroblob(?)")
        if payload_id is None:
            payload_id = db.execute(f"INSERT INTO payloads (key_id, data) VALUES "
                                    f"(?, {placeholder})", (key_id, value)).lastrowid
        else:
            db.execute(f"UPDATE payloads SET key_id = ?, data = {placeholder} WHERE id = ?",
                       (key_id, value, payload_id))
        if not small:
            view = memoryview(stored)
            with db.blobopen("payloads", "data", payload_id) as blob:
                for offset in range(0, len(view), MiB):
                    blob.write(view[offset:offset + MiB])
        return payload_id

    def read_payload(self, db, payload_id: int) -> bytes:
        with db.blobopen("payloads", "data", payload_id, readonly=True) as blob:
            return blob.read()

    # -- upkeep --------------------------------------------------------------------

    @contextlib.contextmanager
    def erasing(self, db):
        """SQLite's secure_delete: freed rows and pages are overwritten with zeros."""
        db.execute("PRAGMA secure_delete = ON")
        try:
            yield db
        finally:
            db.execute("PRAGMA secure_delete = FAST")

    def is_writable(self) -> bool:
        if not self._write_lock.acquire(timeout=2):
            return False
        try:
            self._writer.execute("BEGIN IMMEDIATE")
            self._writer.execute("ROLLBACK")
            return os.access(self.path, os.W_OK)
        except sqlite3.Error:
            return False
        finally:
            self._write_lock.release()

    def size_bytes(self) -> int:
        return sum(os.path.getsize(self.path + suffix) for suffix in ("", "-wal")
                   if os.path.exists(self.path + suffix))

    def rewrite(self) -> None:
        """VACUUM: rebuild the file, so no freed bytes of old payloads remain anywhere in it.
        Writers wait meanwhile (seconds for a large database)."""
        with self._write_lock:
            self._writer.execute("VACUUM")
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._commits += 1
        self.durable()

    def release_free_pages(self) -> None:
        with self._write_lock:
            self._writer.execute("PRAGMA incremental_vacuum")
            self._commits += 1
        self.durable()

    def checkpoint(self, final: bool = False) -> None:
        """Copy the WAL into the database: PASSIVE (never waits for readers or the writer)
        while serving, TRUNCATE at shutdown."""
        if final:
            with self._write_lock:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            with self.read() as tx:
                tx.one("PRAGMA wal_checkpoint(PASSIVE)")

    def copy_to_file(self, path: str, progress: Progress) -> None:
        """SQLite's online backup API: a consistent copy while writers go on. It copies in
        one step: a copy made in steps starts over whenever a writer commits meanwhile."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as source, \
                contextlib.closing(sqlite3.connect(path)) as copy:
            pages = source.execute("PRAGMA page_count").fetchone()[0]
            progress.begin("database file", pages, unit="pages")
            source.backup(copy)
            progress.add(pages, pages * source.execute("PRAGMA page_size").fetchone()[0])
            progress.end()

    def release(self) -> None:
        """Let go of the lock hold() took."""
        self._lock_file.close()

    def close(self) -> None:
        readers, self._readers = self._readers, []
        for db in readers:
            db.close()
        with self._write_lock:
            self._writer.close()
        wal_index, self._wal_index = self._wal_index, None
        for handle in (wal_index, self._wal_file):
            if handle:
                handle.close()


def import_psycopg():
    try:
        import psycopg
    except ImportError:
        raise StoreError("DATABASE_URL names a PostgreSQL database, which needs psycopg 3: "
                         "pip install 'psycopg[binary]'") from None
    return psycopg


class PgRow(tuple):
    """A row that answers by position and by column name, like sqlite3.Row."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


def pg_rows(cursor):
    """psycopg's row factory for PgRow."""
    names = {column.name: index for index, column in enumerate(cursor.description or ())}

    def make(values):
        row = PgRow(values)
        row.names = names
        return row
    return make


class PostgresStore(Store):
    """A PostgreSQL database, shared by any number of oxsync processes.

    Connections are pooled in autocommit mode, and a transaction is an explicit
    BEGIN ... COMMIT. Writers of one namespace take turns on a transaction-scoped
    advisory lock (Records.lock). After every commit the writer advances a sequence,
    oxsync_changes, and a cached read (Store.cached) is reused only while that
    sequence stands still: one statement instead of the read's several.
    """

    DDL_TYPES = [(r"\bINTEGER PRIMARY KEY\b",
                  "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
                 (r"\bINTEGER\b", "BIGINT"), (r"\bREAL\b", "DOUBLE PRECISION"),
                 (r"\bBLOB\b", "BYTEA"), (r"-- postgres: ", "")]
    SEQUENCES = ("payloads", "conflicts")  # their ids come from an identity column
    PAYLOAD_IDS = 64  # payload ids a process takes from the sequence at once
    IN_DOUBT = ("the database connection was lost while committing; the change may or may "
                "not have been stored: read it back before retrying")

    def __init__(self, url: str):
        super().__init__()
        self.psycopg = import_psycopg()
        self.url = url
        self._secret = urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")
        self._idle: list = []
        self._sql: dict[str, str] = {}
        self._held = None
        self._stamp_turn = threading.Condition()
        self._stamp_reading, self._stamp_reads, self._stamp_done = False, 0, 0
        self._stamp_value = None
        self._payload_ids: list[int] = []
        self._payload_ids_lock = threading.Lock()
        with self._errors("connect to"):
            self._put(self._get())
        migrate(self)

    def describe(self) -> str:
        return f"PostgreSQL {mask_url(self.url)}"

    def _scrub(self, error) -> str:
        """psycopg's message in one line, without the password."""
        text = " ".join(str(error).split())
        return text.replace(self._secret, "***") if self._secret else text

    @contextlib.contextmanager
    def _errors(self, doing: str = "use"):
        """The server unreachable or going away -> StoreUnavailable (503), its disk
        full -> StoreFull (507); anything else stays an error of our own making."""
        psycopg = self.psycopg
        try:
            yield
        except psycopg.errors.DiskFull as error:
            raise StoreFull(f"{self.describe()}: {self._scrub(error)}") from None
        except psycopg.OperationalError as error:
            raise StoreUnavailable(f"cannot {doing} {self.describe()}: "
                                   f"{self._scrub(error)}") from None
        except psycopg.InterfaceError as error:
            raise StoreUnavailable(f"lost the connection to {self.describe()}: "
                                   f"{self._scrub(error)}") from None

    # -- connections ---------------------------------------------------------------

    def _get(self):
        while self._idle:
            try:
                db = self._idle.pop()  # atomic (LOCK_FREE)
            except IndexError:
                break
            if not db.closed:
                return db
        return self.psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                    row_factory=pg_rows, application_name="oxsync")

    def _put(self, db) -> None:
        healthy = not db.closed and db.info.transaction_status == \
            self.psycopg.pq.TransactionStatus.IDLE
        if healthy and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(db)
        else:
            with contextlib.suppress(Exception):
                db.close()

    def sql(self, statement: str) -> str:
        """'?' placeholders become '%s' (and a literal '%' becomes '%%')."""
        translated = self._sql.get(statement)
        if translated is None:
            translated = statement.replace("%", "%%").replace("?", "%s")
            self._sql[statement] = translated
        return translated

    @contextlib.contextmanager
    def read(self, snapshot: bool = False):
        """A reader on an autocommit connection: each statement sees what is committed;
        with `snapshot`, one REPEATABLE READ transaction gives them all one view."""
        with self._errors():
            db = self._get()
            try:
                if snapshot:
                    db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                yield Records(self, db)
                if snapshot:
                    db.execute("COMMIT")
            finally:
                if db.info.transaction_status != self.psycopg.pq.TransactionStatus.IDLE:
                    with contextlib.suppress(Exception):
                        db.execute("ROLLBACK")
                self._put(db)

    @contextlib.contextmanager
    def write(self):
        """BEGIN ... COMMIT, then the change counter moves on (after the commit: a reader
        that saw the old count has read the old rows or the new ones, never kept stale
        rows under the new count).

        In pipeline mode: a statement goes out with the next one whose answer is needed,
        so BEGIN and the namespace's lock travel with its first read, and COMMIT with the
        counter's advance and whatever changes came last: one round trip each. A failed
        statement's error may therefore surface at a later read or at COMMIT; either way
        nothing is stored. A COMMIT whose answer never came (the connection went) leaves
        the change in doubt: that is said as it is (500), not as a 503 to retry blindly."""
        with self._errors():
            db, committing = self._get(), False
            pipelining = db.pipeline()
            try:
                pipeline = pipelining.__enter__()
                db.execute("BEGIN")
                yield Records(self, db, pipeline)
                committing = True
                db.execute("COMMIT")
                db.execute("SELECT nextval('oxsync_changes')")
                pipelining.__exit__(None, None, None)
            except BaseException as error:
                if db.closed or db.broken:
                    db.close()
                    # An answer from the server (an error code) says COMMIT did not run:
                    # a backend ends only between statements, and answers in order.
                    if committing and isinstance(error, self.psycopg.OperationalError) \
                            and error.sqlstate is None:
                        raise StoreError(self.IN_DOUBT) from error
                    raise
                with contextlib.suppress(Exception):
                    pipelining.__exit__(type(error), error, None)
                with contextlib.suppress(Exception):
                    db.execute("ROLLBACK")
                raise
            finally:
                self._put(db)

    # -- schema version ------------------------------------------------------------

    def schema_version(self, tx: "Records") -> int:
        """Under a lock, so that processes starting together migrate once."""
        tx.run("SELECT pg_advisory_xact_lock(?)", (lock_key("schema"),))
        tx.run("CREATE TABLE IF NOT EXISTS oxsync_schema (version INTEGER NOT NULL)")
        tx.run("CREATE SEQUENCE IF NOT EXISTS oxsync_changes")
        return tx.value("SELECT max(version) FROM oxsync_schema") or 0

    def set_schema_version(self, tx: "Records", version: int) -> None:
        tx.run("DELETE FROM oxsync_schema")
        tx.run("INSERT INTO oxsync_schema (version) VALUES (?)", (version,))

    def run_ddl(self, tx: "Records", script: str) -> None:
        for pattern, replacement in self.DDL_TYPES:
            script = re.sub(pattern, replacement, script)
        for statement in script.split(";\n"):  # one at a time: a pipeline runs no scripts
            if statement.strip():
                tx.run(statement)

    # -- locks ---------------------------------------------------------------------

    def lock(self, db, name: str) -> None:
        """A transaction-scoped advisory lock: other processes' writers wait for it."""
        db.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(name),))

    @contextlib.contextmanager
    def exclusively(self, name: str):
        with self._errors():
            db, ours = self._get(), False
            try:
                ours = db.execute("SELECT pg_try_advisory_lock(%s)",
                                  (lock_key(name),)).fetchone()[0]
                yield ours
            finally:
                if ours:
                    db.execute("SELECT pg_advisory_unlock(%s)", (lock_key(name),))
                self._put(db)

    def hold(self, exclusive: bool) -> None:
        """Servers hold a shared lock on their own connection; rotate-key needs it alone."""
        with self._errors("connect to"):
            self._held = self._get()
            how = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
            if not self._held.execute(f"SELECT {how}(%s)", (lock_key("servers"),)).fetchone()[0]:
                raise StoreError(f"a server is running on {self.describe()}; stop every "
                                 "oxsync process using it first")

    # -- noticing changes made by any process ------------------------------------------

    def change_stamp(self):
        """The change counter, read for each request, so that a change made by any process
        (a token disabled elsewhere) counts from the very next request. (LISTEN/NOTIFY
        was tried first: its notice can arrive later than that next request, and under
        load it did.) Requests that arrive together share one read: each waits for a
        read that began after it arrived, so it still sees every change committed before
        it came. One read per request cost 70% of GET metadata; shared, far less."""
        turn = self._stamp_turn
        with turn:
            wanted = self._stamp_reads + 1  # the first read that begins after now
            while self._stamp_done < wanted:
                if not self._stamp_reading:
                    break
                turn.wait()
            else:
                return self._stamp_value
            self._stamp_reading = True
            self._stamp_reads += 1
            number = self._stamp_reads
        value = None
        try:
            with self._errors():
                db = self._get()
                try:
                    value = db.execute("SELECT last_value, is_called "
                                       "FROM oxsync_changes").fetchone()
                finally:
                    self._put(db)
        finally:
            with turn:
                self._stamp_reading = False
                if value is not None:
                    self._stamp_done, self._stamp_value = number, value
                turn.notify_all()
        return value

    # -- payloads ------------------------------------------------------------------

    def write_payload(self, db, stored, key_id: str | None, payload_id: int | None) -> int:
        data = bytes(stored)
        if payload_id is None:
            payload_id = self._new_payload_id(db)
            db.execute("INSERT INTO payloads (id, key_id, data) VALUES (%s, %s, %s)",
                       (payload_id, key_id, data))
            return payload_id
        db.execute("UPDATE payloads SET key_id = %s, data = %s WHERE id = %s",
                   (key_id, data, payload_id))
        return payload_id

    def binary_cursor(self, db):
        return db.cursor(binary=True)

    def _new_payload_id(self, db) -> int:
        """An id from the payloads' identity sequence, taken PAYLOAD_IDS at a time so that
        an insert need not wait for RETURNING (ids are unique, and gaps are harmless)."""
        with self._payload_ids_lock:
            if not self._payload_ids:
                self._payload_ids = [row[0] for row in db.execute(
                    "SELECT nextval(pg_get_serial_sequence('payloads', 'id')) "
                    "FROM generate_series(1, %s)", (self.PAYLOAD_IDS,)).fetchall()][::-1]
            return self._payload_ids.pop()

    def read_payload(self, db, payload_id: int) -> bytes:
        row = self.binary_cursor(db).execute("SELECT data FROM payloads WHERE id = %s",
                                             (payload_id,)).fetchone()
        if row is None:
            raise StoreError(f"payload {payload_id} is missing from {self.describe()}")
        return row[0]

    # -- upkeep --------------------------------------------------------------------

    def empty(self) -> None:
        with self.write() as tx:
            tx.run(f"TRUNCATE {', '.join(TABLES)}")

    def after_copy(self, tx: "Records") -> None:
        for table in self.SEQUENCES:
            tx.run(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                   f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)")

    def is_writable(self) -> bool:
        try:
            with self.read() as tx:
                return not tx.value("SELECT pg_is_in_recovery()")
        except StoreError:
            return False

    def size_bytes(self) -> int:
        with self.read() as tx:
            return tx.value("SELECT pg_database_size(current_database())")

    def rewrite(self) -> None:
        """VACUUM FULL of the payloads: no dead copy of an old payload stays in the table
        files. It locks the table meanwhile (seconds for a large database)."""
        with self._errors():
            db = self._get()
            try:
                db.execute("VACUUM FULL payloads")
            finally:
                self._put(db)

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for db in idle + [self._held]:
            if db is not None:
                with contextlib.suppress(Exception):
                    db.close()


def lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit number) for a lock's name."""
    return int.from_bytes(hashlib.sha256(b"oxsync " + name.encode()).digest()[:8], "big",
                          signed=True)


def mask_url(url: str) -> str:
    """The URL with its password (user:PASSWORD@, or password=) replaced by ***."""
    url = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url, flags=re.IGNORECASE)


def migrate(store: Store) -> None:
    """Bring the schema up to SCHEMA_VERSION, in one transaction; refuse a schema
    written by a newer oxsync."""
    try:
        with store.write() as tx:
            version = store.schema_version(tx)
            if version > SCHEMA_VERSION:
                raise StoreError(f"{store.describe()} was written by a newer oxsync (schema "
                                 f"{version}, this version knows {SCHEMA_VERSION}); "
                                 "upgrade oxsync")
            for number in range(version, SCHEMA_VERSION):
                store.run_ddl(tx, MIGRATIONS[number])
                if number == 1:
                    tx.copy_snapshot_fields()
                if "CREATE TABLE manifest_refs" in MIGRATIONS[number]:
                    tx.fill_manifest_refs()
                if "ADD COLUMN manifest_bytes" in MIGRATIONS[number]:
                    tx.fill_manifest_sizes()
                store.set_schema_version(tx, number + 1)
                log.info("database schema migrated to version %d", number + 1)
    except StoreError:
        raise
    except Exception as error:  # sqlite3 or psycopg: no rights, a damaged file, ...
        raise StoreError(f"cannot bring {store.describe()} to schema {SCHEMA_VERSION}: "
                         f"{' '.join(str(error).split())}") from None


def open_store(config: Config) -> tuple[Store, Sealer]:
    """Open the database and check that the configured key fits what it holds."""
    sealer = Sealer(config.encryption_key)
    store = PostgresStore(config.database_url) if config.database_url else \
        SQLiteStore(config.db_path, serving=True)
    store.hold(exclusive=False)
    refuse_unfinished_copy(store)
    check_key(store, sealer)
    return store, sealer


# ---------------------------------------------------------------------------
# 5. Auth: API tokens for the sync API
# ---------------------------------------------------------------------------

TOKEN_PREFIX = "oxs_"
PERMISSIONS = ("read", "write")


def hash_token(raw: str) -> str:
    """Tokens are 256 random bits, so one SHA-256 suffices: no slow hash on the sync path."""
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()


def new_token_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_permissions(value: str) -> str:
    wanted = {part.strip().lower() for part in value.split(",") if part.strip()}
    unknown = wanted - set(PERMISSIONS)
    if unknown or not wanted:
        raise ValueError(f"permissions must be read, write or read,write; got {value!r}")
    return ",".join(p for p in PERMISSIONS if p in wanted)


def check_token_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 100 or any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError("token name must be 1 to 100 printable characters")
    return name


def check_expiry(expires_at: float | None, now: float) -> float | None:
    if expires_at is not None and expires_at <= now:
        raise ValueError(f"the expiry {rfc3339(expires_at)} has already passed; choose a "
                         "time in the future, or none")
    return expires_at


def create_token(tx: Records, name: str, pattern: str, permissions: str,
                 expires_at: float | None) -> tuple[str, str]:
    """-> (token id, raw token). The raw token is never stored."""
    token_id, raw, now = secrets.token_hex(6), new_token_secret(), time.time()
    name = check_new_name(check_token_name(name), "token", tx.token_names())
    tx.insert_token(token_id, name, hash_token(raw), check_pattern(pattern),
                    parse_permissions(permissions), check_expiry(expires_at, now), now)
    return token_id, raw


def rotate_token(tx: Records, token_id: str) -> str | None:
    """A new secret for the same token; the old one stops working at once."""
    raw = new_token_secret()
    changed = tx.update_token(token_id, token_hash=hash_token(raw), rotated_at=time.time())
    return raw if changed else None


def token_view(row) -> dict:
    """A token as the CLI and admin API show it: never the secret or its hash."""
    def when(value):
        return rfc3339(value) if value is not None else None
    return {"id": row["id"], "name": row["name"], "namespacePattern": row["namespace_pattern"],
            "permissions": row["permissions"].split(","), "enabled": bool(row["enabled"]),
            "expiresAt": when(row["expires_at"]), "createdAt": when(row["created_at"]),
            "rotatedAt": when(row["rotated_at"]), "useCount": row["use_count"],
            "lastUsedAt": when(row["last_used_at"]), "lastNamespace": row["last_namespace"],
            "lastIp": row["last_ip"], "lastClientVersion": row["last_client_version"],
            "expired": row["expires_at"] is not None and row["expires_at"] <= time.time()}


def token_from_header(value: str | None) -> str:
    """The raw token from 'Bearer <token>' or 'Basic base64(user:token)'."""
    if not value or not value.strip():
        raise HTTPError(401, "missing Authorization header; send 'Authorization: Bearer "
                             "<token>' with a token from the server's administrator")
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except ValueError:
            raise HTTPError(401, "malformed Basic credentials; expected base64 of "
                                 "'user:token'") from None
        user, colon, password = decoded.partition(":")
        if password or not colon:
            return password if colon else decoded
    raise HTTPError(401, "malformed Authorization header; expected 'Bearer <token>'")


def authenticate(store: Store, raw: str, namespace: str):
    """The token's row joined with the namespace's (its columns NULL when there is none):
    one cached statement, so the hottest path, GET metadata, usually runs no SQL at all."""
    token_hash = hash_token(raw)
    row = store.cached(("token", namespace, token_hash),
                       lambda tx: tx.token_for_namespace(token_hash, namespace))
    if row is None:
        raise HTTPError(401, "unknown token; check that it was pasted whole, or ask the "
                             "server's administrator for a new one")
    return row


def refuse_unusable(row) -> None:
    """401 for a token that is known but disabled or expired."""
    if not row["enabled"]:
        raise HTTPError(401, f"token '{row['name']}' is disabled; ask the server's "
                             "administrator to enable it or to issue a new one")
    if row["expires_at"] is not None and row["expires_at"] <= time.time():
        day = rfc3339(row["expires_at"])[:10]
        raise HTTPError(401, f"token '{row['name']}' expired on {day}; ask the server's "
                             "administrator for a new one")


def namespace_deleted(namespace: str) -> HTTPError:
    """410, not 404: the client would take a 404 for an empty namespace and upload into it."""
    return HTTPError(410, f"namespace '{namespace}' was deleted on the server; its data is "
                          "kept until an administrator restores or purges it")


def authorize(token, namespace: str, namespace_row, permission: str) -> None:
    """Pattern (403), then the namespace's state (410), then the permission (403)."""
    if not pattern_matches(token["namespace_pattern"], namespace):
        raise HTTPError(403, f"token '{token['name']}' may only use namespaces matching "
                             f"'{token['namespace_pattern']}', not '{namespace}'")
    if namespace_row is not None and namespace_row["deleted_at"] is not None:
        raise namespace_deleted(namespace)
    if permission not in token["permissions"].split(","):
        raise HTTPError(403, f"token '{token['name']}' has no {permission} permission; ask "
                             "the server's administrator for a token that has")


class UsageCounter:
    """Token use counted in memory and written in batches, so reads stay reads. A request
    only appends to a deque (no lock to wait on, see LOCK_FREE); collect() adds up."""

    def __init__(self):
        self._lock = threading.Lock()  # for whoever adds up; requests only append
        self._uses: collections.deque = collections.deque()
        self._pending: dict[str, list] = {}  # token id -> [count, time, namespace, ip, version]

    def record(self, token_id: str, namespace: str, ip: str, client_version: str | None):
        self._uses.append((token_id, time.time(), namespace, ip, client_version))

    def collect(self) -> None:
        with self._lock, contextlib.suppress(IndexError):
            while True:
                token_id, when, namespace, ip, version = self._uses.popleft()
                count, _, _, _, last_version = self._pending.get(token_id, (0, 0, "", "", None))
                self._pending[token_id] = [count + 1, when, namespace, ip, version or last_version]

    def flush(self, store: Store) -> None:
        self.collect()
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            with store.write() as tx:
                tx.add_token_use(pending)
        except StoreError:  # counted again with the next batch
            with self._lock:
                for token_id, values in pending.items():
                    later = self._pending.get(token_id)
                    self._pending[token_id] = [values[0] + later[0], *later[1:]] if later \
                        else values
            raise


def device_result(method: str, status: int) -> str:
    """What a sync answer meant for the device that asked (the devices listing)."""
    if status < 400 or (status == 404 and method in ("GET", "HEAD")):  # 404: nothing there yet
        return "ok"
    return DEVICE_RESULTS.get(status) or ("error" if status >= 500 else "bad_request")


DEVICE_RESULTS = {401: "refused", 403: "refused", 410: "deleted", 412: "conflict",
                  413: "too_large", 429: "busy", 503: "busy"}
MAX_DEVICE_TEXT, MAX_DEVICES_PENDING = 128, 10000


def device_text(value) -> str | None:
    """A device id or client version from a header (read as latin-1) or a manifest."""
    if not isinstance(value, str):
        return None
    with contextlib.suppress(UnicodeError):
        value = value.encode("latin-1").decode("utf-8")
    value = value.strip()[:MAX_DEVICE_TEXT]
    return value if value and value.isprintable() else None


def answer_error(body: bytes) -> tuple[str | None, str | None]:
    """The code and message of a JSON error answer (never a payload: errors only)."""
    with contextlib.suppress(ValueError, LookupError, AttributeError, TypeError):
        error = json.loads(body)["error"]
        return text_or_none(error.get("code")), \
            str(error.get("message"))[:300].replace("\0", "")  # PostgreSQL text has no NUL
    return None, None


class DeviceLog:
    """What each device's sync requests showed (namespace, device id from the
    X-OxideTerm-Device-Id header or the manifest's deviceId, token, client version,
    address, result), kept like token use: a request only appends to a deque (see
    LOCK_FREE), collect() keeps the newest per device, flush() writes them in one
    transaction. A refused request whose token is unknown is kept only when its
    namespace exists (Records.record_devices), and at most MAX_DEVICES_PENDING
    devices wait between flushes, so strangers cannot fill the table."""

    def __init__(self):
        self._lock = threading.Lock()  # for whoever adds up; requests only append
        self._seen: collections.deque = collections.deque()
        # (namespace, device id) -> [first seen, token id, last seen, client version, ip,
        #                            result, status, code, message, result since]
        self._pending: dict[tuple, list] = {}
        self.dropped = 0

    def observe(self, request, response: Response) -> None:
        """After each request that RequestHandler.serve answered (which resets namespace
        and device_id; sync_access and put_metadata set them)."""
        namespace = request.namespace
        device = namespace and (request.device_id or request.headers.get(
            "X-OxideTerm-Device-Id"))
        if device:
            self._seen.append((namespace, device, request.token_id, time.time(),
                               request.headers.get("X-OxideTerm-Client-Version"),
                               request.client_ip(), request.command, response.status,
                               response.body if response.status >= 400 else b""))

    def collect(self) -> None:
        with self._lock, contextlib.suppress(IndexError):
            while True:
                self._add(*self._seen.popleft())

    def _add(self, namespace, device, token_id, when, version, ip, method, status, body):
        key = (namespace, device_text(device))
        earlier = self._pending.get(key)
        if key[1] is None or earlier is None and len(self._pending) >= MAX_DEVICES_PENDING:
            self.dropped += key[1] is not None
            return
        result, version = device_result(method, status), device_text(version)
        code, message = answer_error(body) if body else (None, None)
        first, since = when, when
        if earlier is not None:
            first, token_id, version = earlier[0], token_id or earlier[1], version or earlier[3]
            since = earlier[9] if earlier[5:7] == [result, status] else when
        self._pending[key] = [first, token_id, when, version, ip, result, status, code,
                              message, since]

    def flush(self, store: Store) -> None:
        self.collect()
        with self._lock:
            pending, self._pending = self._pending, {}
            dropped, self.dropped = self.dropped, 0
        if dropped:
            log.warning("device log: %d devices not recorded (over %d in one interval)",
                        dropped, MAX_DEVICES_PENDING)
        if not pending:
            return
        try:
            with store.write() as tx:
                tx.record_devices(pending)
        except StoreError:  # kept for the next flush, unless newer news came meanwhile
            with self._lock:
                for key, values in pending.items():
                    self._pending.setdefault(key, values)
            raise


# ---------------------------------------------------------------------------
# 6. HTTP: threaded server, request framing, responses
# ---------------------------------------------------------------------------

IDLE_TIMEOUT = 75          # keep-alive idle; longer than the client's pool keeps idle sockets
SMALL_BODY = 64 * 1024     # unread bodies up to this size are drained to keep the connection
MIN_UPLOAD_RATE = 64 * 1024  # bytes/s a large body must keep up, beyond the request timeout


class ClientGone(Exception):
    """The peer closed or broke the connection mid-request: nothing to answer."""


class Response:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int = 200, body=b"", headers=None, content_type=None):
        self.status = int(status)
        self.body = body
        self.headers = list(headers or ())
        if content_type:
            self.headers.append(("Content-Type", content_type))


def json_body(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(value, status: int = 200, headers=()) -> Response:
    return Response(status, json_body(value), headers, "application/json")


def error_response(error: HTTPError) -> Response:
    return json_response(error.payload(), error.status, error.headers)


class Route:
    """A path template such as /v1/namespaces/{ns}/objects/{path*}, matched on the raw path:
    {name} is one segment, {path*} the rest of the path."""

    def __init__(self, template: str):
        self.template = template
        pattern = re.escape(template).replace(r"\{path\*\}", "(?P<path>.*)")
        self.pattern = re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]*)", pattern))
        self.methods: dict[str, object] = {}
        self.quick: set[str] = set()  # methods whose handler may run in turn (see Turns)
        self.cors = template.startswith("/v1/")  # the sync API answers browsers too

    def params(self, raw_path: str) -> dict | None:
        """The decoded parameters if the path matches, else None; 400 for a bad name."""
        match = self.pattern.fullmatch(raw_path)
        if match is None:
            return None
        params = match.groupdict()
        try:
            for name, raw in params.items():
                if name == "path":
                    params[name] = check_object_path(
                        "/".join(percent_decode(s) for s in raw.split("/")))
                elif name == "ns":
                    params[name] = check_namespace(percent_decode(raw))
                else:
                    params[name] = percent_decode(raw)
        except BadName as error:
            raise HTTPError(400, str(error)) from None
        return params


class Router:
    """Routes on the raw path; each segment is percent-decoded only after it matched."""

    def __init__(self):
        self.routes: dict[str, list[Route]] = {}  # by first path segment
        self._matched: dict[str, tuple[Route, dict]] = {}  # raw path -> its last match

    def route(self, method: str, template: str, quick: bool = False):
        """quick: the handler neither blocks nor reads a body, so it may run in turn."""
        def register(handler):
            routes = self.routes.setdefault(template[1:].split("/")[0], [])
            route = next((r for r in routes if r.template == template), None)
            if route is None:
                route = Route(template)
                routes.append(route)
            route.methods[method] = handler
            if quick:
                route.quick.add(method)
            return handler
        return register

    def match(self, raw_path: str) -> tuple[Route, dict]:
        """-> the route and its decoded parameters. Clients ask for the same few paths
        over and over, so matches are remembered (up to MATCHES_KEPT paths)."""
        matched = self._matched.get(raw_path)
        if matched is not None:
            return matched
        for route in self.routes.get(raw_path[1:].partition("/")[0], ()):
            params = route.params(raw_path)
            if params is not None:
                if len(self._matched) >= MATCHES_KEPT:
                    self._matched.clear()
                self._matched[raw_path] = route, params
                return route, params
        if raw_path.startswith("/admin"):
            raise HTTPError(404, f"no such admin endpoint {raw_path[:200]!r}; the admin API "
                                 "is listed in /openapi.json")
        hint = ""
        if raw_path.startswith("/v1/namespaces/") and raw_path.count("/") > 4:
            hint = (" (a namespace containing '/' must arrive as one segment, 'team%2Fdefault';"
                    " a reverse proxy that decodes paths breaks this)")
        raise HTTPError(404, f"no such endpoint {raw_path[:200]!r}; the sync API is under "
                             f"/v1/namespaces/{{namespace}}/{hint}")


MATCHES_KEPT = 1024
ROUTER = Router()
route = ROUTER.route


class ConnectionWatch:
    """Deadlines for open connections, enforced by one sweeper thread.

    A connection waiting for its next request may idle for IDLE_TIMEOUT. Once a
    request starts, its headers and body must arrive in time: a client that
    stalls or dribbles (slowloris) is cut off instead of holding a thread.

    No lock on the request path (see LOCK_FREE): setting or dropping one key of a dict
    is atomic, and the sweeper works on a copy.
    """

    def __init__(self):
        self._deadlines: dict[socket.socket, tuple[float, bool]] = {}

    def expect(self, sock: socket.socket, seconds: float, idle: bool = False) -> None:
        self._deadlines[sock] = (time.monotonic() + seconds, idle)

    def forget(self, sock: socket.socket) -> None:
        self._deadlines.pop(sock, None)

    def open_connections(self) -> int:
        return len(self._deadlines)

    def busy(self) -> int:
        return sum(not idle for _, idle in list(self._deadlines.values()))

    def sweep(self, idle_too: bool = False) -> None:
        now = time.monotonic()
        overdue = [sock for sock, (deadline, idle) in list(self._deadlines.items())
                   if deadline <= now or (idle_too and idle)]
        for sock in overdue:
            self._deadlines.pop(sock, None)
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # plain shutdown, TLS or not


class Turns:
    """Quick requests served one at a time, in the order they arrived.

    CPython's GIL is not fair. A thread that wants it back after a system call can
    lose it again and again to threads returning from theirs, so with 64 busy
    connections a few GETs waited 20-40 times the median (p99 over 100 ms against a
    6 ms median). A request that takes a turn waits on a lock of its own, released
    by the request before it, and keeps the turn until its answer is sent: the GIL
    is left with no one to choose between. A turn costs one more thread wake-up per
    request (about 10 us here), which buys nothing while few connections compete,
    so turns start only past TURNS_AFTER open connections.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: collections.deque[threading.Lock] = collections.deque()
        self._taken = False

    def take(self) -> None:
        with self._lock:
            if not self._taken:
                self._taken = True
                return
            mine = threading.Lock()
            mine.acquire()
            self._waiting.append(mine)
        mine.acquire()  # released by leave() of the request before: the turn is ours

    def leave(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._taken = False


TURNS_AFTER = 32  # open connections


_date_cache = [0, ""]


def date_header() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, http_date(now)]
    return _date_cache[1]


CONTROL_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")
METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HTTP_VERSION = re.compile(r"HTTP/\d\.\d")
HEADER_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([^\x00-\x08\x0a-\x1f\x7f]*)")
MAX_HEADER_FIELDS, MAX_LINE = 100, 64 * 1024


STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}" for status in HTTPStatus}


class Headers:
    """Request header fields: case-insensitive names, repeatable fields, first value wins."""

    __slots__ = ("_index",)

    def __init__(self, fields: list[tuple[str, str]]):
        self._index: dict[str, list[str]] = {}
        for name, value in fields:
            self._index.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default=None):
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str] | None:
        return self._index.get(name.lower())

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._index


NO_HEADERS = Headers([])  # until a request's own have been read


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """One connection: reads requests, frames bodies, writes answers in one send."""

    disable_nagle_algorithm = True   # TCP_NODELAY: no 40 ms stall per keep-alive request
    # No socket timeout: with one, Python polls before every recv and send, two more
    # system calls (and turns of the GIL) per request. ConnectionWatch enforces the limits.
    timeout = None

    def setup(self):
        super().setup()
        self.app: App = self.server.app
        self.requests_served = 0
        self.in_turn = False
        # An SSL socket cannot try a send without waiting, so TLS connections never
        # take turns (see Turns and send_without_waiting()).
        self.may_take_turns = not isinstance(self.connection, ssl.SSLSocket)

    def handle(self):
        try:
            super().handle()
            if getattr(self, "body_length", 0) and not self.body_read:
                self.linger()
        except OSError:
            pass  # the peer went away or the watch cut the connection
        finally:
            self.app.watch.forget(self.connection)

    def linger(self, seconds: float = 2.0) -> None:
        """After answering early (413, 401...) to a client still sending its body, read
        and drop what it sends for a moment, so closing does not reset the connection
        before the client has read the answer."""
        self.wfile.flush()
        socket.socket.shutdown(self.connection, socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        self.connection.settimeout(0.25)
        while time.monotonic() < deadline:
            try:
                if not self.connection.recv(65536):
                    return
            except TimeoutError:
                continue

    def handle_one_request(self):
        watch, config = self.app.watch, self.app.config
        first = self.requests_served == 0
        watch.expect(self.connection, config.request_timeout_seconds if first else IDLE_TIMEOUT,
                     idle=True)
        if not self.rfile.peek(1):
            self.close_connection = True
            return
        watch.expect(self.connection, config.request_timeout_seconds)
        if self.may_take_turns and watch.open_connections() > TURNS_AFTER and \
                b"\r\n\r\n" in self.rfile.peek():  # the whole head is here: no wait in turn
            self.app.turns.take()
            self.in_turn = True
        try:
            self.answer_one_request()
        finally:
            self.leave_turn()

    def leave_turn(self) -> None:
        if self.in_turn:
            self.in_turn = False
            self.app.turns.leave()

    def answer_one_request(self) -> None:
        self.requests_served += 1
        self.command, self.path, self.headers = None, "", NO_HEADERS
        try:
            complete = self.read_request_head()
        except ClientGone:
            complete = False
        except HTTPError as error:
            self.close_connection = True
            response = error_response(error)
            self.write_response(response)
            self.app.log_access(self, "-", response, 0.0)
            return
        if not complete:
            self.close_connection = True
            return
        self.serve()

    def read_request_head(self) -> bool:
        """The request line and header fields (RFC 9112), read strictly; replaces
        http.server's email-based parser, which cost more than the rest of a GET.

        False for HTTP/0.9, which has no status line to answer with.
        """
        line = self.rfile.readline(8193)
        if len(line) > 8192:
            raise HTTPError(414, "request line is longer than 8 KiB")
        if not line.endswith(b"\n"):
            raise ClientGone()
        self.requestline = line.decode("latin-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) == 2 and words[0] == "GET":
            return False
        if len(words) != 3 or not METHOD.fullmatch(words[0]):
            raise HTTPError(400, "malformed request line; expected 'METHOD /path HTTP/1.1'")
        self.command, self.path, self.request_version = words
        if self.request_version not in ("HTTP/1.1", "HTTP/1.0"):
            if not HTTP_VERSION.fullmatch(self.request_version):
                raise HTTPError(400, f"malformed HTTP version {self.request_version[:20]!r}")
            raise HTTPError(505, "only HTTP/1.0 and HTTP/1.1 are served")
        self.headers = Headers(self.read_header_fields())
        connection = (self.headers.get("Connection") or "").lower()
        self.close_connection = "close" in connection or (
            self.request_version == "HTTP/1.0" and "keep-alive" not in connection)
        return True

    def read_header_fields(self) -> list[tuple[str, str]]:
        """'Name: value' lines up to the empty line. A NUL, a bare CR (which other parsers
        take as a line end, smuggling in a field), obs-fold or a nameless line is a 400."""
        fields = []
        while True:
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                raise HTTPError(431, "a header line is longer than 64 KiB")
            if not line.endswith(b"\n"):
                raise ClientGone()
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            if not line:
                return fields
            if len(fields) == MAX_HEADER_FIELDS:
                raise HTTPError(431, f"more than {MAX_HEADER_FIELDS} header fields")
            field = HEADER_FIELD.fullmatch(line)
            if field is None:
                raise HTTPError(400, "malformed header line; expected 'Name: value'")
            fields.append((field[1].decode("ascii"), field[2].strip(b" \t").decode("latin-1")))

    # -- the request -------------------------------------------------------

    def header(self, name: str) -> str | None:
        """A header as text: X-OxideTerm-* values may be UTF-8, read by http.server as latin-1."""
        value = self.headers.get(name)
        if value is None:
            return None
        try:
            return value.encode("latin-1").decode("utf-8").strip()
        except (UnicodeEncodeError, UnicodeDecodeError):
            raise HTTPError(400, f"{name} header is not valid UTF-8") from None

    def client_ip(self) -> str:
        """The peer, or behind a trusted proxy the address it saw: X-Real-IP, else the LAST
        X-Forwarded-For entry (the one the proxy appended; earlier ones come from the client)."""
        if self.app.config.trust_proxy_headers:
            real = (self.headers.get("X-Real-IP") or "").strip()
            forwarded = (self.headers.get_all("X-Forwarded-For") or [""])[-1].split(",")[-1]
            if real or forwarded.strip():
                return (real or forwarded.strip())[:64]
        return self.client_address[0]

    def is_https(self) -> bool:
        return self.app.certificate is not None or self.app.config.trust_proxy_headers and \
            (self.headers.get("X-Forwarded-Proto") or "").strip().lower() == "https"

    def query(self) -> dict[str, str]:
        query = self.path.partition("?")[2]
        return {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}

    def check_framing(self) -> None:
        """Header sanity and body framing, decided before any handler runs."""
        self.body_length, self.chunked, self.body_read = 0, False, False
        if CONTROL_IN_TARGET.search(self.path):
            raise HTTPError(400, "request target contains control characters", close=True)
        if not self.path.startswith("/"):
            raise HTTPError(400, "request target must be a path starting with '/'", close=True)
        lengths = self.headers.get_all("Content-Length") or []
        encodings = self.headers.get_all("Transfer-Encoding") or []
        if lengths and encodings:
            raise HTTPError(400, "send Content-Length or Transfer-Encoding, not both",
                            close=True)
        if encodings:
            if [e.strip().lower() for e in encodings] != ["chunked"]:
                raise HTTPError(400, "only Transfer-Encoding: chunked is supported", close=True)
            self.chunked = True
        elif lengths:
            if len(lengths) > 1:
                raise HTTPError(400, "more than one Content-Length header", close=True)
            value = lengths[0].strip()
            if not value.isdigit() or not value.isascii() or len(value) > 18:
                raise HTTPError(400, f"Content-Length must be a whole number of bytes, "
                                     f"got {value[:40]!r}", close=True)
            self.body_length = int(value)

    def read_body(self, limit: int, what: str = "body", stored: bool = False):
        """The whole request body (at most `limit` bytes), as a bytearray.

        The size is decided from Content-Length before a byte of the body is read;
        a body to be `stored` also needs room on the disk (507 otherwise).
        """
        if not self.chunked and "Content-Length" not in self.headers:
            raise HTTPError(411, "send a Content-Length header (or chunked "
                                 "Transfer-Encoding) with the body", close=True)
        if self.body_length > limit:
            raise HTTPError(413, f"{what} is {self.body_length} bytes; this server accepts at "
                                 f"most {limit} bytes", close=True)
        if stored:
            self.app.require_space(self.body_length)
        if (self.headers.get("Expect") or "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        expected = self.body_length if not self.chunked else limit
        self.app.watch.expect(self.connection, self.app.config.request_timeout_seconds
                              + expected / MIN_UPLOAD_RATE)
        body = self._read_chunked(limit, what) if self.chunked else self._read_exact(
            self.body_length)
        self.body_read = True
        return body

    def _read_exact(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view, filled = memoryview(buffer), 0
        try:
            while filled < size:
                count = self.rfile.readinto(view[filled:filled + MiB])
                if not count:
                    raise ClientGone()
                filled += count
        except OSError:
            raise ClientGone() from None
        return buffer

    def _read_line(self) -> bytes:
        line = self.rfile.readline(1026)
        if not line:
            raise ClientGone()
        if not line.endswith(b"\n") or len(line) > 1024:
            raise HTTPError(400, "malformed chunked body", close=True)
        return line

    def _read_chunked(self, limit: int, what: str) -> bytearray:
        body = bytearray()
        while True:
            size_text = self._read_line().split(b";", 1)[0].strip()
            if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
                raise HTTPError(400, "invalid chunk size in chunked body", close=True)
            size = int(size_text, 16)
            if size == 0:
                break
            if len(body) + size > limit:
                raise HTTPError(413, f"{what} is over {limit} bytes, the most this server "
                                     "accepts", close=True)
            body += self._read_exact(size)
            if self._read_line().strip():
                raise HTTPError(400, "chunk data longer than its size", close=True)
        for _ in range(100):  # trailer fields, ignored
            if not self._read_line().strip():
                return body
        raise HTTPError(400, "too many trailer fields", close=True)

    def discard_unread_body(self) -> None:
        """Keep the connection usable: drain a small unread body, or close it."""
        if self.body_read or (not self.chunked and self.body_length == 0):
            return
        if self.chunked or self.body_length > SMALL_BODY or self.close_connection:
            self.close_connection = True
            return
        try:
            self._read_exact(self.body_length)
            self.body_read = True
        except ClientGone:
            self.close_connection = True

    # -- answering ---------------------------------------------------------

    def serve(self) -> None:
        started = time.perf_counter()
        self.token_id = self.namespace = self.device_id = route = None
        try:
            self.check_framing()
            if self.body_length or self.chunked:
                self.leave_turn()  # a body may be slow to come
            route, params = ROUTER.match(self.path.split("?", 1)[0])
            method = "GET" if self.command == "HEAD" else self.command
            handler = route.methods.get(method)
            if handler is None and self.command == "OPTIONS" and route.cors:
                handler = cors_preflight
            if handler is not cors_preflight and method not in route.quick:
                self.leave_turn()
            if handler is None:
                allowed = sorted(set(route.methods) | ({"HEAD"} if "GET" in route.methods
                                                       else set())
                                 | ({"OPTIONS"} if route.cors else set()))
                raise HTTPError(405, f"{self.command} is not allowed here; use "
                                     f"{', '.join(allowed)}",
                                headers=[("Allow", ", ".join(allowed))])
            response = handler(self, **params)
        except HTTPError as error:
            self.close_connection = self.close_connection or error.close
            response = error_response(error)
        except ClientGone:
            self.close_connection = True
            return
        except Exception as error:  # noqa: BLE001 - every failure becomes a JSON answer
            response = error_response(self.app.explain_failure(error, self))
        self.discard_unread_body()
        if self.server.draining:
            self.close_connection = True  # say so in this answer: the server is stopping
        if self.path.startswith("/v1/"):
            response.headers.extend(self.app.cors_headers(self.headers.get("Origin")))
        # Noted before the answer leaves, so whoever got the answer finds it in the list.
        self.app.devices.observe(self, response)
        self.write_response(response)
        self.app.log_access(self, route.template if route else "-", response,
                            time.perf_counter() - started)

    def write_response(self, response: Response) -> None:
        status = response.status
        lines = [STATUS_LINES[status], f"Date: {date_header()}", f"Server: oxsync/{VERSION}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        body = response.body
        if status not in (204, 304):
            lines.append(f"Content-Length: {len(body)}")
        if self.command == "HEAD" or status in (204, 304):
            body = b""
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.bytes_sent = len(body)
        if len(body) <= SMALL_BODY:
            data = head + body
            if self.in_turn:
                data = data[self.send_without_waiting(data):]
                self.leave_turn()
            if data:
                self.wfile.write(data)
        else:
            self.leave_turn()
            self.app.watch.expect(self.connection, self.app.config.request_timeout_seconds
                                  + len(body) / MIN_UPLOAD_RATE)
            self.wfile.write(head)
            self.wfile.write(body)

    def send_without_waiting(self, data: bytes) -> int:
        """How much of data the socket took at once: in turn, a client that stops reading
        must not hold up the requests queued behind it."""
        try:
            return self.connection.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def log_message(self, format, *args):  # http.server's own stderr lines (the request line)
        log.debug("http.server: " + format, *clip_strings(args))


class Certificate:
    """The TLS certificate and key in use, reloaded on SIGHUP or when the files change.

    A pair that fails to load is refused with a log line; the old one stays in use.
    """

    WARN_DAYS = 14

    def __init__(self, cert_path: str, key_path: str):
        self.cert_path, self.key_path = cert_path, key_path
        self.context, self.expires_at = self._load()
        self._stamp = self._file_stamp()
        self._lock = threading.Lock()

    def _file_stamp(self):
        with contextlib.suppress(OSError):
            return tuple(os.stat(p).st_mtime_ns for p in (self.cert_path, self.key_path))
        return None

    def _load(self) -> tuple[ssl.SSLContext, float | None]:
        for path in (self.cert_path, self.key_path):
            if not os.access(path, os.R_OK):
                raise ConfigError(f"cannot read {path}: " + (
                    "permission denied" if os.path.exists(path) else "no such file"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        context.set_alpn_protocols(["http/1.1"])
        asked = []  # OpenSSL asks for a pass phrase only for a protected key
        try:  # an empty answer: such a key fails instead of prompting on a terminal
            context.load_cert_chain(self.cert_path, self.key_path,
                                    password=lambda: asked.append(True) or b"")
        except (ssl.SSLError, OSError) as error:
            text = str(error)
            reason = "the key does not match the certificate" if "MISMATCH" in text else \
                "the key is protected by a pass phrase; give oxsync an unencrypted key " \
                "(readable only by its user)" if asked else \
                f"not a PEM certificate and key ({getattr(error, 'reason', None) or text})"
            raise ConfigError(f"TLS pair {self.cert_path} / {self.key_path}: {reason}") from None
        expires = certificate_expiry(self.cert_path)
        if expires is not None and expires <= time.time():
            raise ConfigError(f"the certificate {self.cert_path} expired on "
                              f"{rfc3339(expires)[:10]}; renew it")
        if expires is not None and expires - time.time() < self.WARN_DAYS * 86400:
            log.warning("the TLS certificate expires on %s, in less than %d days; renew it",
                        rfc3339(expires)[:10], self.WARN_DAYS)
        return context, expires

    def reload(self, reason: str) -> bool:
        with self._lock:
            stamp = self._file_stamp()
            try:
                self.context, self.expires_at = self._load()
            except ConfigError as error:
                log.error("certificate reload (%s) refused, the current one stays: %s",
                          reason, error)
                return False
            finally:
                self._stamp = stamp
        log.info("TLS certificate reloaded (%s); it expires %s", reason,
                 rfc3339(self.expires_at) if self.expires_at else "(unknown)")
        return True

    def reload_if_changed(self) -> None:
        if self._file_stamp() != self._stamp:
            self.reload("files changed")


def certificate_expiry(path: str) -> float | None:
    """notAfter of a PEM certificate: with `cryptography` if present, else the ssl module's."""
    try:
        from cryptography import x509
        with open(path, "rb") as file:
            return x509.load_pem_x509_certificate(file.read()).not_valid_after_utc.timestamp()
    except ImportError:
        decode = getattr(ssl._ssl, "_test_decode_cert", None)  # noqa: SLF001 - no public API
        return ssl.cert_time_to_seconds(decode(path)["notAfter"]) if decode else None
    except ValueError as error:
        raise ConfigError(f"cannot read the certificate {path}: {error}") from None


class Server(http.server.ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS of them; the rest get 503."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, app: "App"):
        self.app = app
        self.draining = False
        host, port = app.config.listen
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._slots = threading.BoundedSemaphore(app.config.max_connections)
        self._refusers = threading.BoundedSemaphore(32)
        super().__init__((host, port), RequestHandler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            with contextlib.suppress(OSError, AttributeError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # TCPServer's bind: http.server's own would look up the host's FQDN in DNS.
        http.server.socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            if self._refusers.acquire(blocking=False):
                threading.Thread(target=self._refuse, args=(request,), daemon=True).start()
            else:
                self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request, client_address):
        """With TLS, the handshake runs here, on the connection's own thread, with a deadline."""
        secure = self._handshake(request, client_address)
        if secure is None:
            return
        try:
            super().finish_request(secure, client_address)
        finally:
            if secure is not request:
                secure.close()

    def _handshake(self, sock: socket.socket, client_address) -> socket.socket | None:
        certificate = self.app.certificate
        if certificate is None:
            return sock
        try:
            sock.settimeout(self.app.config.request_timeout_seconds)
            secure = certificate.context.wrap_socket(sock, server_side=True,
                                                     do_handshake_on_connect=False)
        except OSError:
            return None
        try:
            secure.do_handshake()
            secure.settimeout(None)  # from here on ConnectionWatch keeps the deadlines
            return secure
        except (OSError, ValueError) as error:
            log.debug("TLS handshake with %s failed: %s", client_address[0], error)
            secure.close()
            return None

    def _refuse(self, sock: socket.socket) -> None:
        """Too many connections: a 503 the client retries after Retry-After. Runs on one of
        a few short-lived threads, so silent connections cannot stall the accept loop."""
        log.warning("connection limit (%d) reached; answering 503",
                    self.app.config.max_connections)
        body = json_body({"error": {"code": "unavailable", "message": "the server is at its "
                                    "connection limit; retry shortly"}})
        try:
            sock.settimeout(2)
            sock = self._handshake(sock, ("-",)) or sock
            with contextlib.suppress(OSError):
                sock.recv(65536)  # the request head, so closing does not reset the answer
            sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\n"
                         b"Content-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        finally:
            self.shutdown_request(sock)
            self._refusers.release()


QUOTA_LIMITS = ("namespace_bytes", "namespaces_per_token")  # refusal counters in /metrics


class Metrics:
    """Request counters and latencies for /metrics, in Prometheus text format."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self):
        self._lock = threading.Lock()  # for whoever adds up; requests only append
        self._pending: collections.deque = collections.deque()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list] = {}  # route -> count per bucket and +Inf, sum, count
        self.totals = {"received_bytes": 0, "sent_bytes": 0, "conflicts": 0, "auth_failures": 0,
                       "history_versions_trimmed": 0}
        self.totals["password_checks"] = 0
        self.refusals = dict.fromkeys(QUOTA_LIMITS, 0)

    def add(self, name: str, amount: int = 1) -> None:
        """For rare events (conflicts, failed authentication), so a lock is fine here."""
        with self._lock:
            self.totals[name] += amount

    def refused(self, limit: str) -> None:
        """A write refused by one of QUOTA_LIMITS (rare, so a lock is fine here too)."""
        with self._lock:
            self.refusals[limit] += 1

    def observe(self, route: str, method: str, status: int, seconds: float,
                received: int, sent: int) -> None:
        """Noted now (an atomic append, see LOCK_FREE), summed up by collect()."""
        self._pending.append((route, method, status, seconds, received, sent))

    def collect(self) -> None:
        """Add up what requests noted; the housekeeping thread calls it twice a second."""
        with self._lock, contextlib.suppress(IndexError):
            while True:
                route, method, status, seconds, received, sent = self._pending.popleft()
                key = (route, method, status)
                self.requests[key] = self.requests.get(key, 0) + 1
                series = self.latency.setdefault(route, [0] * (len(self.BUCKETS) + 3))
                series[bisect.bisect_left(self.BUCKETS, seconds)] += 1  # smallest le= that fits
                series[-2] += seconds
                series[-1] += 1
                self.totals["received_bytes"] += received
                self.totals["sent_bytes"] += sent

    def render(self, gauges: dict[str, float]) -> str:
        self.collect()

        def label(value) -> str:
            return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines = ["# TYPE oxsync_build_info gauge", f'oxsync_build_info{{version="{VERSION}"}} 1',
                 "# HELP oxsync_requests_total Requests answered, by route template and status.",
                 "# TYPE oxsync_requests_total counter"]
        with self._lock:
            lines += [f'oxsync_requests_total{{route="{label(r)}",method="{m}",status="{s}"}} {n}'
                      for (r, m, s), n in sorted(self.requests.items())]
            lines += ["# HELP oxsync_request_duration_seconds Time to answer a request.",
                      "# TYPE oxsync_request_duration_seconds histogram"]
            for route, series in sorted(self.latency.items()):
                name = f'oxsync_request_duration_seconds_bucket{{route="{label(route)}",le='
                lines += [f'{name}"{bound}"}} {count}' for bound, count
                          in zip(self.BUCKETS, itertools.accumulate(series))]
                lines += [f'{name}"+Inf"}} {series[-1]}',
                          f'oxsync_request_duration_seconds_sum{{route="{label(route)}"}} '
                          f'{series[-2]:.6f}',
                          f'oxsync_request_duration_seconds_count{{route="{label(route)}"}} '
                          f'{series[-1]}']
            for name, value in self.totals.items():
                lines += [f"# TYPE oxsync_{name}_total counter", f"oxsync_{name}_total {value}"]
            lines += ["# HELP oxsync_quota_refusals_total Writes refused by a quota, by limit.",
                      "# TYPE oxsync_quota_refusals_total counter"]
            lines += [f'oxsync_quota_refusals_total{{limit="{limit}"}} {count}'
                      for limit, count in self.refusals.items()]
        for name, value in gauges.items():
            lines += [f"# TYPE oxsync_{name} gauge", f"oxsync_{name} {value}"]
        return "\n".join(lines) + "\n"


class App:
    """What every request needs: settings, the store, the sealer, counters."""

    def __init__(self, config: Config, store: Store, sealer: Sealer, log_writer: "LogWriter",
                 certificate: Certificate | None = None):
        self.config, self.store, self.sealer = config, store, sealer
        self.log_writer, self.certificate = log_writer, certificate
        self.usage = UsageCounter()
        self.devices = DeviceLog()
        self.watch = ConnectionWatch()
        self.turns = Turns()
        self.jwt_secret = config.admin_jwt_secret or secrets.token_bytes(32)
        self.metrics = Metrics()
        self.started = time.monotonic()
        self.unavailable_answers, self.next_unavailable_log = 0, 0.0
        self.admin_page = load_admin_page()
        self.password_checks = threading.BoundedSemaphore(PASSWORD_CHECKS_AT_ONCE)

    def disk_free(self) -> int | None:
        """Free bytes on the database's disk; None when it is not on this machine."""
        folder = self.store.local_dir
        return shutil.disk_usage(folder).free if folder else None

    def require_space(self, incoming: int) -> None:
        free = self.disk_free()
        if free is not None and free - incoming < self.config.min_free_disk_bytes:
            log.error("refusing a write: %d bytes free on the data disk, minimum %d", free,
                      self.config.min_free_disk_bytes)
            raise HTTPError(507, "the server's disk is nearly full, so it accepts no writes; "
                                 "ask its administrator to free space", close=True)

    def cors_headers(self, origin: str | None) -> list[tuple[str, str]]:
        allowed = self.config.sync_cors_allowed_origins
        if "*" in allowed:
            return [("Access-Control-Allow-Origin", "*"),
                    ("Access-Control-Expose-Headers", "ETag")]
        if origin and origin.rstrip("/") in allowed:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                    ("Access-Control-Expose-Headers", "ETag")]
        return [("Vary", "Origin")]

    def explain_failure(self, error: Exception, request) -> HTTPError:
        """An unexpected exception as a JSON answer; the traceback goes to the log only."""
        where = f"{clip(request.command, 20)} {clip(request.path)}"
        if isinstance(error, StoreFull) or getattr(error, "errno", None) == 28:
            log.error("disk full while answering %s: %s", where, error)
            return HTTPError(507, "the server's disk is full; nothing was stored; ask its "
                                  "administrator to free space")
        if isinstance(error, StoreUnavailable):
            self.unavailable_answers += 1
            if time.monotonic() >= self.next_unavailable_log:  # one line per 5 s, not per request
                self.next_unavailable_log = time.monotonic() + 5
                log.warning("database unavailable (%d requests answered 503 so far), e.g. "
                            "%s: %s", self.unavailable_answers, where, error)
            return HTTPError(503, "the database is busy or unreachable; nothing was stored; "
                                  "retry shortly", headers=[("Retry-After", "2")])
        if isinstance(error, StoreError):
            log.error("database error answering %s: %s", where, error)
            return HTTPError(500, f"database error: {error}")
        log.exception("unexpected error answering %s", where)
        return HTTPError(500, "the server hit an unexpected error; its log has the details")

    def log_access(self, request, template: str, response: Response, seconds: float) -> None:
        received = request.body_length if getattr(request, "body_read", False) else 0
        # A method nobody routes counts as OTHER: each made-up one would be a series forever.
        method = request.command if request.command in HTTP_METHODS else "OTHER"
        self.metrics.observe(template, method, response.status, seconds,
                             received, getattr(request, "bytes_sent", 0))
        level = logging.DEBUG if template in ("/health", "/ready") else logging.INFO
        if access_log.isEnabledFor(level):
            fields = (request.client_ip(), clip(request.command, 20), template, response.status,
                      getattr(request, "bytes_sent", 0), seconds * 1000,
                      getattr(request, "token_id", None) or "-")
            self.log_writer.access(level, ACCESS_LINE, fields)


ACCESS_LINE = "%s %s %s %d %dB %.1fms token=%s"
HTTP_METHODS = frozenset(("GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"))


def cors_preflight(request: RequestHandler, **_) -> Response:
    headers = [("Access-Control-Allow-Methods", "GET, PUT, OPTIONS"),
               ("Access-Control-Allow-Headers", SYNC_REQUEST_HEADERS),
               ("Access-Control-Max-Age", "600")]
    return Response(204, headers=headers)


SYNC_REQUEST_HEADERS = ("Authorization, Content-Type, If-Match, If-None-Match, "
                        "X-OxideTerm-Revision, X-OxideTerm-Device-Id, "
                        "X-OxideTerm-Section-Revisions, X-OxideTerm-Client-Version")


# ---------------------------------------------------------------------------
# 7. Sync API (PROTOCOL.md sections 4-6)
# ---------------------------------------------------------------------------

METADATA_LIMIT = 256 * 1024
MAX_JSON_DEPTH = 100
SNAPSHOT_TYPE = "application/vnd.oxideterm.oxide"
EMPTY_METADATA = json_body({"exists": False, "contentLength": 0})
SERVER_OWNED_FIELDS = ("exists", "etag", "contentLength", "contentHash")
TYPES_BY_EXTENSION = {".json": "application/json", ".oxide": SNAPSHOT_TYPE}


class ConflictError(HTTPError):
    """412: the etag the client sent is not the current one. The client matches this body."""

    def __init__(self, message: str, remote_etag: str | None, remote_revision: str | None):
        super().__init__(412, message, code="etag_conflict_detected")
        self.remote = {"remoteRevision": remote_revision, "remoteEtag": remote_etag}

    def payload(self) -> dict:
        error = {"code": self.code, "message": self.message}
        error.update((k, v) for k, v in self.remote.items() if v is not None)
        return {"ok": False, "error": error}


def quote_etag(etag: str) -> str:
    return f'"{etag}"'


def parse_json_object(body, what: str) -> dict:
    """Strict JSON: UTF-8, an object, finite numbers, no duplicate keys, bounded depth."""
    def no_duplicates(pairs):
        result = dict(pairs)
        if len(result) != len(pairs):
            seen = set()
            duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise ValueError(f"duplicate key {duplicate!r}")
        return result

    def finite(text):
        number = float(text)
        if number in (float("inf"), float("-inf")):
            raise ValueError(f"number {text[:40]} is out of range")
        return number

    def reject_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(bytes(body).decode("utf-8"), object_pairs_hook=no_duplicates,
                           parse_float=finite, parse_constant=reject_constant)
    except UnicodeDecodeError:
        raise HTTPError(400, f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise HTTPError(400, f"{what} is nested too deeply") from None
    except ValueError as error:
        raise HTTPError(400, f"{what} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise HTTPError(400, f"{what} must be a JSON object, not {type(value).__name__}")
    if json_depth(value) > MAX_JSON_DEPTH:
        raise HTTPError(400, f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        json_body(value)
    except UnicodeEncodeError:
        raise HTTPError(400, f"{what} contains a lone UTF-16 surrogate escape such as "
                             "\\ud800; strings must be valid Unicode") from None
    return value


def json_depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item \
            if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return deepest


def sync_access(request, namespace: str, permission: str):
    """Authenticate and authorize a sync call -> the namespace's row (joined with the
    token's), or None when the namespace does not exist yet."""
    request.namespace = namespace  # for the device log, whatever the answer
    try:
        token = authenticate(request.app.store,
                             token_from_header(request.headers.get("Authorization")), namespace)
        request.token_id = token["id"]
        refuse_unusable(token)
    except HTTPError:
        request.app.metrics.add("auth_failures")
        raise
    row = token if token["namespace"] is not None else None
    authorize(token, namespace, row, permission)
    version = (request.header("X-OxideTerm-Client-Version") or "")[:128] or None
    request.app.usage.record(token["id"], namespace, request.client_ip(), version)
    return row


def request_conditions(request) -> list[tuple[frozenset | str, bool]]:
    """If-Match (must match) and If-None-Match (must not), parsed before the body is read."""
    conditions = []
    for name, must_match in (("If-Match", True), ("If-None-Match", False)):
        values = request.headers.get_all(name)
        if values:
            try:
                conditions.append((parse_etags(", ".join(values)), must_match))
            except BadName as error:
                raise HTTPError(400, f"{name}: {error}") from None
    return conditions


def conditions_hold(conditions, current_etag: str | None) -> bool:
    return all(etag_matches(tags, current_etag) == must_match for tags, must_match in conditions)


def not_modified(request, etag: str | None) -> Response | None:
    """304 for a GET whose If-None-Match names the current etag."""
    conditions = [c for c in request_conditions(request) if not c[1]]
    if etag is not None and conditions and not conditions_hold(conditions, etag):
        return Response(304, headers=[("ETag", quote_etag(etag))])
    return None


def writable_namespace(tx: Records, namespace: str, now: float, request):
    """The namespace's row, with its write turn taken (created empty if it is new, when
    the token may still bring a namespace into being and its name passes the look-alike
    rule)."""
    if tx.lock_namespace(namespace) is None:
        limit = request.app.config.max_namespaces_per_token
        count = tx.lock_token_namespaces(request.token_id)
        if limit and count >= limit:
            raise quota_refusal(request, "namespaces_per_token", HTTPError(
                403, f"this token has already created {count} namespaces, its limit "
                     f"(MAX_NAMESPACES_PER_TOKEN = {limit}), so it cannot create "
                     f"'{namespace}'; sync into an existing namespace, or ask the server's "
                     "administrator to create this one or to raise MAX_NAMESPACES_PER_TOKEN",
                code="namespace_limit_reached"))
        tx.lock_namespace_names()
        try:  # the look-alike is not named: it may be outside the token's scope
            check_new_name(namespace, "namespace", tx.namespace_names(), show_twin=False)
        except BadName as error:
            raise HTTPError(400, str(error)) from None
    row = tx.lock_namespace(namespace, now, created_by=request.token_id)
    if row["deleted_at"] is not None:
        raise namespace_deleted(namespace)
    return row


def in_mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB"


def check_namespace_quota(tx: Records, request, namespace: str, used_before: int) -> None:
    """Refuse (and roll back) a write that leaves the namespace over MAX_NAMESPACE_BYTES;
    one that does not add to its use passes, so a namespace over a lowered limit can
    still shrink."""
    limit = request.app.config.max_namespace_bytes
    used = tx.namespace_use(namespace)[0]
    if limit and used > limit and used > used_before:
        raise quota_refusal(request, "namespace_bytes", HTTPError(
            507, f"namespace '{namespace}' would hold {used} bytes ({in_mib(used)}), over its "
                 f"limit of {limit} bytes ({in_mib(limit)}, MAX_NAMESPACE_BYTES); nothing was "
                 f"stored; ask the server's administrator to raise MAX_NAMESPACE_BYTES",
            code="namespace_quota_exceeded"))


def quota_refusal(request, limit: str, error: HTTPError) -> HTTPError:
    request.app.metrics.refused(limit)
    log.info("refused a write (token %s): %s", request.token_id, error.message)
    return error


def trim_after_write(tx: Records, request, namespace: str) -> None:
    """The write's history stays within MAX_HISTORY_BYTES (see trim_history)."""
    dropped = trim_history(tx, namespace, request.app.config.max_history_bytes)
    if dropped:
        request.app.metrics.add("history_versions_trimmed", dropped)


def conflict_or_none(tx: Records, request, conditions, namespace: str, operation: str, *,
                     current_etag, current_revision=None, path=None, revision=None,
                     device_id=None) -> ConflictError | None:
    """Check the preconditions inside the write transaction; log a conflict row if they fail."""
    if conditions_hold(conditions, current_etag):
        return None
    requested = ", ".join("*" if tags == ANY_ETAG else ", ".join(sorted(tags))
                          for tags, _ in conditions)
    tx.record_conflict(namespace, operation, path=path, device_id=device_id,
                    token_id=request.token_id, requested_etag=requested,
                    requested_revision=revision, remote_etag=current_etag,
                    remote_revision=current_revision)
    request.app.metrics.add("conflicts")
    log.info("412 conflict on %s of namespace %r%s: sent %s, current %s", operation, namespace,
             f" path {clip(path)!r}" if path else "", clip(requested), current_etag)
    what = "object" if operation == "object" else "snapshot"
    return ConflictError(f"Remote {what} changed before upload completed", current_etag,
                         current_revision)


def write_answer(metadata: dict, revision: str) -> Response:
    """The write's answer; `revision` is the one sent (it may not be stored)."""
    answer = {"ok": True, "revision": revision, "etag": metadata["etag"]}
    if "sectionRevisions" in metadata:
        answer["sectionRevisions"] = metadata["sectionRevisions"]
    return json_response(answer, headers=[("ETag", quote_etag(metadata["etag"]))])


def open_payload(request, stored, key_id, namespace: str, kind: str, path: str = ""):
    try:
        return request.app.sealer.open(stored, key_id, payload_context(namespace, kind, path))
    except SealError as error:
        where = f"object {path!r}" if path else "snapshot"
        log.error("cannot open the stored %s of namespace %r: %s", where, namespace, error)
        raise HTTPError(500, f"the stored {where} could not be decrypted; the server's "
                             "administrator should check its log") from None


def request_content_type(request) -> str | None:
    value = request.header("Content-Type")
    if value and (len(value) > 200 or not value.isprintable() or not value.isascii()):
        raise HTTPError(400, "Content-Type must be printable ASCII of at most 200 characters")
    return value or None


@route("GET", "/v1/namespaces/{ns}/metadata", quick=True)
def get_metadata(request, ns):
    row = sync_access(request, ns, "read")
    if row is None or row["metadata"] is None:
        return Response(200, EMPTY_METADATA, content_type="application/json")
    etag = row["etag"]
    return not_modified(request, etag) or Response(
        200, row["metadata"].encode(), [("ETag", quote_etag(etag))], "application/json")


@route("PUT", "/v1/namespaces/{ns}/metadata")
def put_metadata(request, ns):
    app = request.app
    sync_access(request, ns, "write")
    conditions = request_conditions(request)
    manifest = parse_json_object(request.read_body(METADATA_LIMIT, "metadata", stored=True),
                                 "metadata")
    request.device_id = text_or_none(manifest.get("deviceId"))
    revision = manifest.get("revision")
    if not isinstance(revision, str) or not revision:
        raise HTTPError(400, "metadata needs a non-empty string 'revision'")
    now = time.time()
    with app.store.write() as tx:
        row = writable_namespace(tx, ns, now, request)
        previous = stored_metadata(row)
        conflict = conflict_or_none(tx, request, conditions, ns, "metadata",
                                    current_etag=row["etag"],
                                    current_revision=previous.get("revision"),
                                    revision=revision, device_id=manifest.get("deviceId"))
        if conflict is None:
            metadata = {"exists": True}
            metadata.update((key, value) for key, value in manifest.items()
                            if key not in SERVER_OWNED_FIELDS and value is not None)
            metadata.setdefault("uploadedAt", rfc3339(now))
            metadata["etag"] = new_etag()
            metadata["contentLength"] = previous.get("contentLength", 0)
            if "contentHash" in previous:
                metadata["contentHash"] = previous["contentHash"]
            drop_unkept(metadata, app.config.unkept_metadata_fields)
            tx.save_metadata(ns, metadata, now)
            tx.record_manifest(ns, metadata, now, request.token_id)
            trim_after_write(tx, request, ns)
    if conflict:
        raise conflict
    return write_answer(metadata, revision)


@route("GET", "/v1/namespaces/{ns}/blob")
def get_blob(request, ns):
    sync_access(request, ns, "read")
    with request.app.store.read(snapshot=True) as tx:  # the etag of exactly these bytes
        blob = tx.blob(ns)
        if blob is None:
            raise HTTPError(404, f"namespace '{ns}' has no snapshot yet")
        cached = not_modified(request, blob["etag"])
        if cached:
            return cached
        stored = tx.read_payload(blob["payload_id"])
    data = open_payload(request, stored, blob["key_id"], ns, "blob")
    return Response(200, data, [("ETag", quote_etag(blob["etag"]))], SNAPSHOT_TYPE)


@route("PUT", "/v1/namespaces/{ns}/blob")
def put_blob(request, ns):
    app = request.app
    sync_access(request, ns, "write")
    conditions = request_conditions(request)
    revision = request.header("X-OxideTerm-Revision")
    if not revision:
        raise HTTPError(400, "X-OxideTerm-Revision header is required: the revision of the "
                             "snapshot being uploaded")
    device_id = request.header("X-OxideTerm-Device-Id") or None
    section_revisions = None
    with contextlib.suppress(HTTPError):  # not a valid JSON object: ignored, as the contract says
        section_revisions = parse_json_object(
            (request.header("X-OxideTerm-Section-Revisions") or "").encode(), "header")
    content_type = request_content_type(request) or SNAPSHOT_TYPE
    body = request.read_body(app.config.max_blob_size, "snapshot", stored=True)
    size, digest = len(body), hashlib.sha256(body).hexdigest()
    stored, key_id = app.sealer.seal(body, payload_context(ns, "blob"))
    del body
    now = time.time()
    with app.store.write() as tx:
        row = writable_namespace(tx, ns, now, request)
        metadata = stored_metadata(row)
        conflict = conflict_or_none(tx, request, conditions, ns, "blob",
                                    current_etag=row["etag"],
                                    current_revision=metadata.get("revision"),
                                    revision=revision, device_id=device_id)
        if conflict is None:
            used_before = tx.namespace_use(ns)[0]
            kept = drop_unkept({"revision": revision, "deviceId": device_id,
                                "contentHash": digest}, app.config.unkept_metadata_fields)
            set_blob_metadata(metadata, revision=kept.get("revision"),
                              digest=kept.get("contentHash"), size=size, uploaded=now,
                              content_type=content_type, device_id=kept.get("deviceId"),
                              section_revisions=section_revisions)
            drop_unkept(metadata, app.config.unkept_metadata_fields)
            tx.save_metadata(ns, metadata, now)
            tx.keep_blob_version(ns, app.config.blob_history)
            sections = metadata.get("sectionRevisions")
            tx.put_blob(ns, now, tx.store_payload(stored, key_id), kept.get("revision"),
                        kept.get("deviceId"),
                        None if sections is None else json_body(sections).decode(),
                        content_type, size, kept.get("contentHash", ""))
            check_namespace_quota(tx, request, ns, used_before)
            trim_after_write(tx, request, ns)
    if conflict:
        raise conflict
    return write_answer(metadata, revision)


@route("GET", "/v1/namespaces/{ns}/objects/{path*}")
def get_object(request, ns, path):
    sync_access(request, ns, "read")
    with request.app.store.read(snapshot=True) as tx:
        row = tx.object(ns, path)
        if row is None:
            raise HTTPError(404, f"no object {path!r} in namespace '{ns}'")
        cached = not_modified(request, row["etag"])
        if cached:
            return cached
        stored = tx.read_payload(row["payload_id"])
    data = open_payload(request, stored, row["key_id"], ns, "object", path)
    content_type = row["content_type"] or TYPES_BY_EXTENSION.get(
        os.path.splitext(path)[1].lower(), "application/octet-stream")
    return Response(200, data, [("ETag", quote_etag(row["etag"])),
                                ("Last-Modified", http_date(row["updated_at"]))], content_type)


@route("PUT", "/v1/namespaces/{ns}/objects/{path*}")
def put_object(request, ns, path):
    app = request.app
    sync_access(request, ns, "write")
    conditions = request_conditions(request)
    content_type = request_content_type(request)
    body = request.read_body(app.config.max_object_size, "object", stored=True)
    size = len(body)
    stored, key_id = app.sealer.seal(body, payload_context(ns, "object", path))
    del body
    now = time.time()
    with app.store.write() as tx:
        writable_namespace(tx, ns, now, request)
        existing = tx.object(ns, path)
        conflict = conflict_or_none(tx, request, conditions, ns, "object", path=path,
                                    current_etag=existing["etag"] if existing else None)
        if conflict is None:
            used_before = tx.namespace_use(ns)[0]
            etag = new_etag()
            tx.put_object(ns, path, tx.store_payload(stored, key_id), size, etag, content_type,
                          now)
            if existing:
                tx.drop_payloads([existing["payload_id"]])
            tx.touch_namespace(ns, now)
            check_namespace_quota(tx, request, ns, used_before)
    if conflict:
        raise conflict
    return json_response({"ok": True, "etag": etag}, 200 if existing else 201,
                         [("ETag", quote_etag(etag))])


@route("GET", "/health", quick=True)
def health(request):
    return json_response({"status": "ok", "service": SERVICE_NAME})


@route("GET", "/ready")
def ready(request):
    app = request.app
    free = app.disk_free()
    writable = app.store.is_writable()
    above = free is None or free >= app.config.min_free_disk_bytes
    try:
        with app.store.read() as tx:
            admin_enabled = tx.admin_exists()
    except StoreUnavailable:
        writable, admin_enabled = False, None
    body = {"status": "ok" if writable and above else "degraded", "dbWritable": writable,
            "diskFreeBytes": free, "minFreeDiskBytes": app.config.min_free_disk_bytes,
            "diskAboveMinimum": above, "encryptionEnabled": app.sealer.enabled,
            "adminEnabled": admin_enabled,
            "jwtSecretPersistent": app.config.admin_jwt_secret is not None, "version": VERSION}
    if app.certificate and app.certificate.expires_at:
        body["tlsCertificateExpiresAt"] = rfc3339(app.certificate.expires_at)
    if writable and above:
        return json_response(body)
    return json_response(body, 503, [("Retry-After", "5")])


@route("GET", "/metrics")
def metrics(request):
    app = request.app
    expected = app.config.metrics_token
    if expected is None:
        raise HTTPError(404, "metrics are off; set METRICS_TOKEN to turn them on")
    given = (request.headers.get("Authorization") or "").partition(" ")
    if given[0].lower() != "bearer" or not hmac.compare_digest(given[2].strip().encode(),
                                                               expected):
        app.metrics.add("auth_failures")
        raise HTTPError(401, "metrics need 'Authorization: Bearer <METRICS_TOKEN>'")
    gauges = {"database_bytes": app.store.size_bytes(), "disk_free_bytes": app.disk_free(),
              "open_connections": app.watch.open_connections(),
              "encryption_enabled": int(app.sealer.enabled),
              "log_lines_dropped": app.log_writer.dropped.total()}
    if gauges["disk_free_bytes"] is None:  # the database is not on this machine
        del gauges["disk_free_bytes"]
    if app.certificate and app.certificate.expires_at:
        gauges["tls_certificate_expiry_timestamp_seconds"] = int(app.certificate.expires_at)
    return Response(200, app.metrics.render(gauges).encode(),
                    content_type="text/plain; version=0.0.4; charset=utf-8")


@route("GET", "/")
def root(request):
    return Response(302, b"", [("Location", "admin")])


# ---------------------------------------------------------------------------
# 8. Admin API (PROTOCOL.md section 8)
# ---------------------------------------------------------------------------

SCRYPT = {"n": 2 ** 15, "r": 8, "p": 1}
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    """scrypt with a random salt; the parameters are stored so they can be raised later."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=64 * MiB, dklen=32, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        actual = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n),
                                r=int(r), p=int(p), maxmem=128 * MiB, dklen=len(digest) // 2)
    except ValueError:
        return False
    return hmac.compare_digest(actual.hex(), digest)


def check_password_strength(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    return password


def set_admin_password(store: Store, username: str, password: str) -> str:
    """Create, or reset and enable, an admin user -> 'created', 'reset' or 'unchanged'.

    The same password again keeps the old hash, so a restart does not end the user's
    sessions. scrypt runs outside the write transaction: it takes a tenth of a second,
    and sync uploads must not wait for it.
    """
    with store.read() as tx:
        row = tx.admin_user(username)
    if row and row["enabled"] and verify_password(password, row["password_hash"]):
        return "unchanged"
    password_hash, now = hash_password(check_password_strength(password)), time.time()
    with store.write() as tx:
        tx.lock_admin_users()
        if tx.insert_admin_user(username, password_hash, now):
            return "created"
        if row is None:  # another process starting beside this one created it meanwhile
            return "unchanged"
        tx.set_admin_user(username, password_hash=password_hash, enabled=True, now=now)
    return "reset"


def apply_admin_password(store: Store, username: str, password: str) -> str:
    """ADMIN_PASSWORD at startup -> 'created', 'reset', 'unchanged' or 'kept'.

    A value seen for the first time creates or resets the user (the way back in after
    a forgotten password). The value applied last is remembered (its scrypt hash, in
    settings), so the same value at the next start changes nothing: a password changed
    in the admin page or with the CLI since then is kept ('kept'), and so is a disable.
    """
    setting = f"admin_password_applied {username}"
    with store.read() as tx:
        applied = tx.setting(setting)
    if applied and verify_password(password, applied):
        return "kept"
    outcome = set_admin_password(store, username, password)
    with store.write() as tx:
        tx.set_setting(setting, hash_password(password))
    return outcome


def load_admin_page() -> bytes | None:
    """admin.html beside this module (a checkout, or inside the zipapp), else where
    `pip install` puts it: share/oxsync/ under the environment or the user's base."""
    # No abspath: inside a zipapp the loader only knows the archive path as it was given.
    path = os.path.join(os.path.dirname(__file__), "admin.html")
    get_data = getattr(globals().get("__loader__"), "get_data", None)  # zipimporter
    installed = [os.path.join(base, "share", "oxsync", "admin.html")
                 for base in (sys.prefix, site.getuserbase())]
    for candidate in [path] + installed:
        with contextlib.suppress(OSError):
            with open(candidate, "rb") as file:
                return file.read()
    try:
        return get_data(path) if get_data else None
    except OSError:
        return None


def admin_page_headers(page: bytes) -> list[tuple[str, str]]:
    """A CSP that allows exactly the page's own inline script and style, by hash."""
    def hashes(tag: str) -> str:
        bodies = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, re.S)
        return " ".join("'sha256-%s'" % base64.b64encode(hashlib.sha256(body).digest())
                        .decode() for body in bodies) or "'none'"
    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
              "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
              "frame-ancestors 'none'")
    return [("Content-Security-Policy", policy), ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff")]


@route("GET", "/admin")
def admin_page(request):
    with request.app.store.read() as tx:
        enabled = tx.admin_exists()
    if not enabled:
        raise HTTPError(404, "the admin page is off because no admin user exists; start oxsync "
                             "with ADMIN_PASSWORD set (or run: oxsync admin set-password)")
    page = request.app.admin_page
    if page is None:
        raise HTTPError(404, "admin.html is missing from this installation")
    headers = admin_page_headers(page)
    if request.app.certificate:
        headers.append(("Strict-Transport-Security", "max-age=31536000"))
    return Response(200, page, headers, "text/html; charset=utf-8")


route("GET", "/admin/")(admin_page)  # the same page with a trailing slash

# -- sessions: an HS256 JWT in an HttpOnly cookie, plus a CSRF token ----------

SESSION_COOKIE, CSRF_COOKIE = "oxsync_session", "oxsync_csrf"
SESSION_SECONDS = 24 * 3600


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Strict base64url (RFC 7515 section 2): the alphabet only, no padding, and the one
    canonical spelling, so a token has exactly one accepted form."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(data) != text:
        raise ValueError("not the canonical base64url spelling")
    return data


def jwt_encode(claims: dict, secret: bytes) -> str:
    signing_input = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(json_body(claims))
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


def jwt_decode(token: str, secret: bytes) -> dict:
    """The claims of a valid, unexpired HS256 token; ValueError for anything else."""
    try:
        header_part, claims_part, signature_part = token.split(".")
        header = json.loads(b64url_decode(header_part))
        signature = b64url_decode(signature_part)
    except (ValueError, TypeError):
        raise ValueError("malformed token") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise ValueError("only HS256 is accepted")
    expected = hmac.new(secret, f"{header_part}.{claims_part}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise ValueError("bad signature")
    claims = json.loads(b64url_decode(claims_part))
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
        raise ValueError("malformed claims")
    if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] <= time.time():
        raise ValueError("expired")
    return claims


def password_version(password_hash: str) -> str:
    """Changes with the password, so a reset ends the user's other sessions."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def request_cookies(request) -> dict[str, str]:
    jar = http.cookies.SimpleCookie()
    with contextlib.suppress(http.cookies.CookieError):
        jar.load(request.headers.get("Cookie") or "")
    return {name: morsel.value for name, morsel in jar.items()}


def cookie_path(base: str) -> str:
    """Path=<base>/admin. The page sends its base path (the prefix a reverse proxy strips,
    e.g. '/sync'), which the server cannot see; only safe path characters are kept."""
    base = base.rstrip("/") if re.fullmatch(r"(/[A-Za-z0-9._~%!$&'()*+,=:@-]*)*", base) else ""
    return f"{base[:200]}/admin"


def session_cookies(request, token: str, csrf: str, max_age: int,
                    path: str) -> list[tuple[str, str]]:
    secure = "; Secure" if request.app.config.admin_cookie_secure and request.is_https() else ""
    common = f"SameSite=Strict; Path={path}; Max-Age={max_age}{secure}"
    return [("Set-Cookie", f"{SESSION_COOKIE}={token}; HttpOnly; {common}"),
            ("Set-Cookie", f"{CSRF_COOKIE}={csrf}; {common}")]


def admin_session(request) -> dict:
    """The logged-in admin's claims; checks the CSRF header on every non-GET call."""
    token = request_cookies(request).get(SESSION_COOKIE)
    if not token:
        raise HTTPError(401, "not logged in; log in to the admin page")
    try:
        claims = jwt_decode(token, request.app.jwt_secret)
    except ValueError:
        raise HTTPError(401, "your session ended; log in again") from None
    with request.app.store.read() as tx:
        user = tx.admin_user(claims["sub"])
        ended = tx.session_ended(str(claims.get("sid")))
    if user is None or not user["enabled"] or ended or \
            claims.get("ver") != password_version(user["password_hash"]):
        raise HTTPError(401, "your session ended; log in again")
    if request.command not in ("GET", "HEAD") and not hmac.compare_digest(
            (request.headers.get("X-CSRF-Token") or "").encode(),
            str(claims.get("csrf", "")).encode()):
        raise HTTPError(403, "missing or wrong X-CSRF-Token header; reload the admin page")
    request.admin_user = claims["sub"]
    return claims


def audit(request, action: str, detail: str = "") -> None:
    audit_log.info("admin=%s ip=%s %s %s", getattr(request, "admin_user", "-"),
                   request.client_ip(), action, detail)


def admin_body(request) -> dict:
    return parse_json_object(request.read_body(64 * 1024, "request body"), "request body")


def field(body: dict, name: str, kind, required: bool = True):
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise HTTPError(400, f"'{name}' must be a {kind.__name__}")
    return value


_dummy_hash = []


def login_delay_hash() -> str:
    """An unknown user costs the same scrypt as a wrong password."""
    if not _dummy_hash:
        _dummy_hash.append(hash_password(secrets.token_hex(16)))
    return _dummy_hash[0]


def count_login_attempt(tx: Records, config: Config, ip: str, now: float) -> tuple[int, bool]:
    """Count an attempt BEFORE its password is checked (whether or not it gets a turn to be
    checked) -> (0, whether a failure locks the address out) to go ahead, or (seconds the
    address stays locked out, True).

    Under the address's lock (one row shared by every process), so a burst of any size
    checks at most MAX_LOGIN_FAILURES passwords per window: the attempt that reaches the
    limit sets the lockout at once, and a login that succeeds clears the row again."""
    tx.lock_login(ip)
    row = tx.login_failures(ip)
    if row and row["locked_until"] and row["locked_until"] > now:
        return int(row["locked_until"] - now) + 1, True
    fresh = row is None or now - row["window_start"] > config.login_window_seconds
    attempts = 1 if fresh else row["failures"] + 1
    last = attempts >= config.max_login_failures
    tx.set_login_failures(ip, 0 if last else attempts, now if fresh else row["window_start"],
                          now + config.login_lockout_seconds if last else None)
    return 0, last


def in_words(seconds: float) -> str:
    """'40 seconds', '1 minute', '15 minutes', '2 hours'."""
    for size, unit in ((3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size or unit == "second":
            count = max(1, round(seconds / size))
            return f"{count} {unit}{'s' if count != 1 else ''}"


def locked_out(seconds: int) -> HTTPError:
    return HTTPError(429, f"Too many failed logins from this address: try again in "
                          f"{in_words(seconds)}, or ask the operator to run 'oxsync admin "
                          "unlock'.", headers=[("Retry-After", str(seconds))])


PASSWORD_CHECKS_AT_ONCE = 2  # scrypt needs 32 MiB each: a burst of logins must not add up


@contextlib.contextmanager
def password_check_turn(app: App):
    """One of the few turns to run scrypt, or 429 at once (without reading a hash)."""
    if not app.password_checks.acquire(blocking=False):
        raise HTTPError(429, "the server is checking other logins right now; try again in a "
                             "second", headers=[("Retry-After", "1")])
    try:
        yield
    finally:
        app.password_checks.release()


@route("POST", "/admin/api/login")
def admin_login(request):
    app, ip = request.app, request.client_ip()
    body = admin_body(request)
    username = field(body, "username", str, required=False) or app.config.admin_username
    password = field(body, "password", str)
    with app.store.write() as tx:  # counted before the check, even if it never runs
        wait, locks = count_login_attempt(tx, app.config, ip, time.time())
        user = tx.admin_user(username) if not wait else None
    if wait:
        raise locked_out(wait)
    with password_check_turn(app):
        app.metrics.add("password_checks")
        valid = verify_password(password, user["password_hash"] if user else
                                login_delay_hash())
    if not (valid and user and user["enabled"]):
        # An unknown name may be a password typed into the wrong field: never log it.
        audit(request, "login-failed", f"username={username!r}" if user else
              f"unknown username ({len(username)} characters)")
        if locks:
            raise locked_out(app.config.login_lockout_seconds)
        raise HTTPError(401, "wrong username or password")
    with app.store.write() as tx:
        tx.clear_login_failures(ip)
    request.admin_user = username
    audit(request, "login")
    path = cookie_path(field(body, "basePath", str, required=False) or "")
    claims, cookies = new_session(request, user, path)
    return json_response(session_view(claims), headers=cookies)


def new_session(request, user, path: str) -> tuple[dict, list[tuple[str, str]]]:
    """Claims and Set-Cookie headers for a fresh 24-hour session of `user`."""
    now, csrf = int(time.time()), secrets.token_urlsafe(32)
    claims = {"sub": user["username"], "iat": now, "exp": now + SESSION_SECONDS,
              "sid": secrets.token_urlsafe(12), "csrf": csrf,
              "ver": password_version(user["password_hash"]), "path": path}
    token = jwt_encode(claims, request.app.jwt_secret)
    return claims, session_cookies(request, token, csrf, SESSION_SECONDS, path)


def session_view(claims: dict) -> dict:
    return {"username": claims["sub"], "expiresAt": rfc3339(claims["exp"]),
            "csrfToken": claims["csrf"]}


@route("POST", "/admin/api/logout")
def admin_logout(request):
    claims = admin_session(request)
    with request.app.store.write() as tx:  # a copied cookie must not outlive the logout
        tx.end_session(str(claims.get("sid")), claims["exp"], time.time())
    audit(request, "logout")
    return json_response({"ok": True}, headers=session_cookies(
        request, "", "", 0, claims.get("path", "/admin")))


@route("GET", "/admin/api/me")
def admin_me(request):
    return json_response(session_view(admin_session(request)))


@route("POST", "/admin/api/me/password")
def admin_change_own_password(request):
    claims = admin_session(request)
    body = admin_body(request)
    current, new = field(body, "currentPassword", str), field(body, "newPassword", str)
    with request.app.store.read() as tx:
        user = existing_user(tx, claims["sub"])
    if not verify_password(current, user["password_hash"]):
        raise HTTPError(403, "the current password is wrong")
    password_hash = new_password_hash(new)
    with request.app.store.write() as tx:
        tx.set_admin_user(claims["sub"], password_hash=password_hash, now=time.time())
        user = existing_user(tx, claims["sub"])
    audit(request, "change-own-password")
    # The new password ends every other session of this user; this one continues.
    claims, cookies = new_session(request, user, claims.get("path", "/admin"))
    return json_response({"ok": True, **session_view(claims)}, headers=cookies)


# -- users ---------------------------------------------------------------------

def user_view(row) -> dict:
    return {"username": row["username"], "enabled": bool(row["enabled"]),
            "createdAt": rfc3339(row["created_at"]), "updatedAt": rfc3339(row["updated_at"])}


def new_password_hash(password: str) -> str:
    """Hashed before any write transaction: scrypt must not hold up sync writes."""
    try:
        return hash_password(check_password_strength(password))
    except ValueError as error:
        raise HTTPError(400, str(error)) from None


def existing_user(tx: Records, username: str):
    row = tx.admin_user(username)
    if row is None:
        raise HTTPError(404, f"no admin user named {username!r}")
    return row


def keep_one_admin(tx: Records, request, username: str, doing: str) -> None:
    """Neither your own account nor the last enabled one can be disabled or deleted:
    either would lock the operator out of the page."""
    if username == request.admin_user:
        raise HTTPError(409, f"you cannot {doing} your own account while logged in with it; "
                             "another admin can, or use 'oxsync admin' on the server")
    tx.lock_admin_users()
    if not tx.other_enabled_admins(username):
        raise HTTPError(409, f"{username!r} is the last enabled admin user; create or enable "
                             "another one first")


@route("GET", "/admin/api/users")
def admin_users(request):
    admin_session(request)
    with request.app.store.read() as tx:
        rows = tx.admin_users()
    return json_response({"users": [user_view(row) for row in rows]})


@route("POST", "/admin/api/users")
def admin_create_user(request):
    admin_session(request)
    body = admin_body(request)
    username, password = field(body, "username", str).strip(), field(body, "password", str)
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", username):
        raise HTTPError(400, "username must be 1-64 letters, digits or _ . @ -")
    password_hash, now = new_password_hash(password), time.time()
    with request.app.store.write() as tx:
        if not tx.insert_admin_user(username, password_hash, now):
            raise HTTPError(409, f"an admin user named {username!r} already exists")
        row = existing_user(tx, username)
    audit(request, "create-user", f"username={username!r}")
    return json_response({"user": user_view(row)}, 201)


@route("PATCH", "/admin/api/users/{name}")
def admin_update_user(request, name):
    admin_session(request)
    body = admin_body(request)
    enabled, password = field(body, "enabled", bool, False), field(body, "password", str, False)
    password_hash = new_password_hash(password) if password is not None else None
    with request.app.store.write() as tx:
        existing_user(tx, name)
        if enabled is False:
            keep_one_admin(tx, request, name, "disable")
        tx.set_admin_user(name, password_hash=password_hash, enabled=enabled, now=time.time())
        row = existing_user(tx, name)
    audit(request, "update-user", f"username={name!r} enabled={enabled} "
                                  f"password={'reset' if password else 'unchanged'}")
    return json_response({"user": user_view(row)})


@route("DELETE", "/admin/api/users/{name}")
def admin_delete_user(request, name):
    admin_session(request)
    with request.app.store.write() as tx:
        existing_user(tx, name)
        keep_one_admin(tx, request, name, "delete")
        tx.delete_admin_user(name)
    audit(request, "delete-user", f"username={name!r}")
    return json_response({"ok": True})


# -- listings: search, sort and keyset pages (namespaces, tokens, devices) ------

LIST_LIMIT, MAX_LIST_LIMIT, MAX_SEARCH = 100, 500, 200
NEWEST_FIRST = {"size", "lastWrite", "versions", "lastUsed", "lastSeen"}  # default desc


def one_of(*choices: str):
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return check


def list_parameter(query: dict, name: str, check, default=None):
    """A query parameter checked by `check` (ValueError: 400 that names it)."""
    if name not in query:
        return default
    try:
        return check(query[name])
    except (ValueError, BadName) as error:
        raise HTTPError(400, f"{name}={query[name][:100]!r}: {error}") from None


def page_size(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIST_LIMIT:
        raise ValueError(f"must be a whole number from 1 to {MAX_LIST_LIMIT}")
    return int(value)


def search_text(value: str) -> str | None:
    if len(value) > MAX_SEARCH or not value.isprintable():
        raise ValueError(f"must be at most {MAX_SEARCH} printable characters")
    return value.strip() or None


def list_request(request, sorts: dict, default_sort: str, **filters) -> Listing:
    """The listing a query string asks for: q, sort, order, limit, cursor and the
    listing's own `filters` (name -> check); anything else is a 400."""
    query = request.query()
    unknown = sorted(set(query) - {"q", "sort", "order", "limit", "cursor", *filters})
    if unknown:
        raise HTTPError(400, f"unknown parameter {unknown[0][:100]!r}; this listing takes q, "
                             f"sort, order, limit, cursor{''.join(', ' + f for f in filters)}")
    sort = list_parameter(query, "sort", one_of(*sorts), default_sort)
    order = list_parameter(query, "order", one_of("asc", "desc"),
                           "desc" if sort in NEWEST_FIRST else "asc")
    listing = Listing(sort, order == "desc", list_parameter(query, "q", search_text),
                      {name: list_parameter(query, name, check)
                       for name, check in filters.items() if name in query},
                      limit=list_parameter(query, "limit", page_size, LIST_LIMIT))
    if "cursor" in query:
        listing.after = open_cursor(request, query["cursor"], listing)
    return listing


def cursor_mac(request, listing: Listing, keys: bytes) -> bytes:
    """Binds a cursor to its listing and query, so an altered one is refused."""
    query = json_body([request.path.split("?")[0], listing.sort, listing.descending,
                       listing.search, listing.filters])
    return hmac.new(request.app.jwt_secret, b"list cursor\0" + query + b"\0" + keys,
                    hashlib.sha256).digest()[:16]


def make_cursor(request, listing: Listing, page: Page) -> str | None:
    """The opaque cursor of the page after this one; None on the last page."""
    if not page.more:
        return None
    keys = json_body(page.keys)
    return f"{b64url(keys)}.{b64url(cursor_mac(request, listing, keys))}"


def open_cursor(request, cursor: str, listing: Listing) -> list:
    refused = HTTPError(400, "cursor is not one this listing gave out for these q, sort, "
                             "order and filters (or the server restarted without "
                             "ADMIN_JWT_SECRET); start again without a cursor")
    try:
        encoded_keys, _, mac = cursor.partition(".")
        keys = b64url_decode(encoded_keys)
        if not hmac.compare_digest(b64url_decode(mac), cursor_mac(request, listing, keys)):
            raise refused
        after = json.loads(keys)
    except (ValueError, TypeError):
        raise refused from None
    if not isinstance(after, list) or not all(
            isinstance(key, (str, int, float)) for key in after):
        raise refused
    return after


def list_answer(request, name: str, listing: Listing, page: Page, items: list) -> Response:
    return json_response({name: items, "total": page.total, "matched": page.matched,
                          "nextCursor": make_cursor(request, listing, page)})


# -- tokens --------------------------------------------------------------------

def existing_token(tx: Records, token_id: str):
    row = tx.token(token_id)
    if row is None:
        raise HTTPError(404, f"no token with id {token_id!r}")
    return row


def token_items(tx: Records, rows: list, limit: int) -> list[dict]:
    """Tokens (a page of them) with how many namespaces each one's writes brought into
    being, and the limit (MAX_NAMESPACES_PER_TOKEN, None: unlimited)."""
    counts = tx.namespaces_per_token([row["id"] for row in rows])
    return [{**token_view(row), "namespaceCount": counts.get(row["id"], 0),
             "maxNamespaces": limit or None} for row in rows]


def token_answer(tx: Records, token_id: str, config: Config) -> dict:
    """One token as the admin API shows it (see token_items)."""
    return token_items(tx, [existing_token(tx, token_id)], config.max_namespaces_per_token)[0]


def expiry_field(body: dict) -> float | None:
    value = field(body, "expiresAt", str, required=False)
    try:
        return parse_rfc3339(value) if value else None
    except ValueError as error:
        raise HTTPError(400, f"expiresAt: {error}") from None


@route("GET", "/admin/api/tokens")
def admin_tokens(request):
    """A page of tokens: q (name, namespace pattern or id), status, sort, order, limit."""
    admin_session(request)
    listing = list_request(request, TOKEN_SORTS, "created",
                           status=one_of(*TOKEN_STATUSES))
    request.app.usage.flush(request.app.store)  # show use up to this moment
    with request.app.store.read(snapshot=True) as tx:
        page, names = tx.token_page(listing, time.time()), tx.token_names()
        items = token_items(tx, page.rows, request.app.config.max_namespaces_per_token)
    views = flag_lookalikes(items, "token", names)
    return list_answer(request, "tokens", listing, page, views)


@route("POST", "/admin/api/tokens")
def admin_create_token(request):
    admin_session(request)
    body = admin_body(request)
    permissions = field(body, "permissions", list)
    if not all(isinstance(p, str) for p in permissions):
        raise HTTPError(400, "'permissions' must be a list like [\"read\", \"write\"]")
    expires = expiry_field(body)
    ttl = request.app.config.default_token_ttl_seconds
    if expires is None and ttl:
        expires = time.time() + ttl
    try:
        with request.app.store.write() as tx:
            token_id, raw = create_token(tx, field(body, "name", str),
                                         field(body, "namespacePattern", str),
                                         ",".join(permissions), expires)
            view = token_answer(tx, token_id, request.app.config)
    except ValueError as error:  # BadName is a ValueError too
        raise HTTPError(400, str(error)) from None
    audit(request, "create-token", f"id={token_id} pattern={view['namespacePattern']!r}")
    return json_response({"token": view, "secret": raw}, 201)


@route("PATCH", "/admin/api/tokens/{token_id}")
def admin_update_token(request, token_id):
    admin_session(request)
    body = admin_body(request)
    changes = {}
    if "enabled" in body:
        changes["enabled"] = field(body, "enabled", bool)
    if "expiresAt" in body:
        try:
            changes["expires_at"] = check_expiry(expiry_field(body), time.time())
        except ValueError as error:
            raise HTTPError(400, f"expiresAt: {error}") from None
    with request.app.store.write() as tx:
        existing_token(tx, token_id)
        if "name" in body:
            try:
                changes["name"] = check_new_name(
                    check_token_name(field(body, "name", str)), "token",
                    [row["name"] for row in tx.tokens() if row["id"] != token_id])
            except ValueError as error:
                raise HTTPError(400, str(error)) from None
        if changes:
            tx.update_token(token_id, **changes)
        view = token_answer(tx, token_id, request.app.config)
    audit(request, "update-token", f"id={token_id} fields={','.join(changes) or 'none'}")
    return json_response({"token": view})


@route("DELETE", "/admin/api/tokens/{token_id}")
def admin_delete_token(request, token_id):
    admin_session(request)
    with request.app.store.write() as tx:
        existing_token(tx, token_id)
        tx.delete_token(token_id)
    audit(request, "delete-token", f"id={token_id}")
    return json_response({"ok": True})


@route("POST", "/admin/api/tokens/{token_id}/rotate")
def admin_rotate_token(request, token_id):
    admin_session(request)
    with request.app.store.write() as tx:
        existing_token(tx, token_id)
        raw = rotate_token(tx, token_id)
        view = token_answer(tx, token_id, request.app.config)
    audit(request, "rotate-token", f"id={token_id}")
    return json_response({"token": view, "secret": raw})


# -- namespaces, conflicts, stats -----------------------------------------------

def with_limits(view: dict, max_bytes: int, max_history_bytes: int) -> dict:
    """A namespace's use with its limits beside it (None: unlimited): usedBytes against
    maxBytes (MAX_NAMESPACE_BYTES), historyBytes against maxHistoryBytes."""
    return {**view, "maxBytes": max_bytes or None, "maxHistoryBytes": max_history_bytes or None}


def existing_namespace(tx: Records, name: str, config: Config) -> dict:
    views = tx.namespace_views(name)
    if not views:
        raise HTTPError(404, f"no namespace named {name!r}")
    view = flag_lookalikes(views, "namespace", tx.namespace_names())[0]
    return with_limits(view, config.max_namespace_bytes, config.max_history_bytes)


@route("GET", "/admin/api/namespaces")
def admin_namespaces(request):
    """A page of namespaces: q (part of the name), sort, order, limit, cursor."""
    admin_session(request)
    listing = list_request(request, NAMESPACE_SORTS, "name")
    with request.app.store.read(snapshot=True) as tx:
        page, names = tx.namespace_page(listing), tx.namespace_names()
    config = request.app.config
    views = flag_lookalikes([with_limits(namespace_view(row), config.max_namespace_bytes,
                                         config.max_history_bytes) for row in page.rows],
                            "namespace", names)
    return list_answer(request, "namespaces", listing, page, views)


@route("POST", "/admin/api/namespaces")
def admin_create_namespace(request):
    admin_session(request)
    try:
        name = check_namespace(field(admin_body(request), "name", str))
    except BadName as error:
        raise HTTPError(400, str(error)) from None
    with request.app.store.write() as tx:
        tx.lock_namespace_names()
        if tx.namespace(name) is not None:
            raise HTTPError(409, f"namespace {name!r} already exists")
        try:
            check_new_name(name, "namespace", tx.namespace_names())
        except BadName as error:
            raise HTTPError(400, str(error)) from None
        tx.create_namespace(name, time.time())
        view = existing_namespace(tx, name, request.app.config)
    audit(request, "create-namespace", f"namespace={name!r}")
    return json_response({"namespace": view}, 201)


@route("DELETE", "/admin/api/namespaces/{ns}")
def admin_delete_namespace(request, ns):
    admin_session(request)
    hard = request.query().get("hard", "false").lower() == "true"
    with request.app.store.write() as tx:
        tx.lock_namespace(ns)
        view = existing_namespace(tx, ns, request.app.config)
        if hard and not view["deleted"]:
            raise HTTPError(409, f"namespace {ns!r} must be deleted (soft) before it can be "
                                 "purged")
        if hard:
            freed = tx.purge_namespace(ns)
        else:
            tx.set_namespace_deleted(ns, True)
            view = existing_namespace(tx, ns, request.app.config)
    audit(request, "purge-namespace" if hard else "delete-namespace", f"namespace={ns!r}")
    return json_response({"ok": True, "freedBytes": freed} if hard else {"namespace": view})


@route("POST", "/admin/api/namespaces/{ns}/restore")
def admin_restore_namespace(request, ns):
    admin_session(request)
    with request.app.store.write() as tx:
        tx.lock_namespace(ns)
        existing_namespace(tx, ns, request.app.config)
        tx.set_namespace_deleted(ns, False)
        view = existing_namespace(tx, ns, request.app.config)
    audit(request, "restore-namespace", f"namespace={ns!r}")
    return json_response({"namespace": view})


@route("GET", "/admin/api/conflicts")
def admin_conflicts(request):
    admin_session(request)
    try:
        limit = min(max(int(request.query().get("limit", "100")), 1), 1000)
    except ValueError:
        raise HTTPError(400, "limit must be a whole number") from None
    with request.app.store.read() as tx:
        rows = tx.conflicts(limit)
        token_names = {row["id"]: row["name"] for row in tx.tokens()}
    return json_response({"conflicts": [{
        "id": row["id"], "at": rfc3339(row["at"]), "namespace": row["namespace"],
        "operation": row["operation"], "path": row["path"], "deviceId": row["device_id"],
        "tokenId": row["token_id"], "tokenName": token_names.get(row["token_id"]),
        "requestedEtag": row["requested_etag"],
        "requestedRevision": row["requested_revision"], "remoteEtag": row["remote_etag"],
        "remoteRevision": row["remote_revision"]} for row in rows]})


STALE_DAYS = 7  # a device that has not synced for longer is flagged stale


def stale_days(value: str) -> float:
    try:
        days = float(value)
    except ValueError:
        raise ValueError("must be a number of days") from None
    if not 0 < days <= 36500:
        raise ValueError("must be a number of days above 0")
    return days


def device_view(row, stale_before: float) -> dict:
    """A device as the admin API and CLI show it: what its requests showed, no payload."""
    return {"namespace": row["namespace"], "deviceId": row["device_id"],
            "tokenId": row["token_id"], "tokenName": row["token_name"],
            "firstSeenAt": rfc3339(row["first_seen_at"]),
            "lastSeenAt": rfc3339(row["last_seen_at"]), "clientVersion": row["client_version"],
            "lastIp": row["last_ip"], "lastResult": row["last_result"],
            "lastStatus": row["last_status"], "lastCode": row["last_code"],
            "lastMessage": row["last_message"], "lastResultAt": rfc3339(row["last_result_at"]),
            "stale": row["last_seen_at"] < stale_before, "problem": row["last_result"] != "ok"}


def device_listing(store: Store, listing: Listing) -> tuple[Page, list[dict]]:
    stale_before = time.time() - listing.filters.get("staleDays", STALE_DAYS) * 86400
    with store.read(snapshot=True) as tx:
        page = tx.device_page(listing, stale_before)
    return page, [device_view(row, stale_before) for row in page.rows]


@route("GET", "/admin/api/devices")
def admin_devices(request):
    """A page of devices as their syncs showed them: q (device id, namespace, token name,
    address), namespace, status (ok, problem, stale), staleDays, sort, order, limit."""
    admin_session(request)
    listing = list_request(request, DEVICE_SORTS, "lastSeen", namespace=check_namespace,
                           status=one_of(*DEVICE_STATUSES), staleDays=stale_days)
    request.app.devices.flush(request.app.store)  # show them up to this moment
    page, views = device_listing(request.app.store, listing)
    return list_answer(request, "devices", listing, page, views)


@route("GET", "/admin/api/stats")
def admin_stats(request):
    admin_session(request)
    app = request.app
    with app.store.read() as tx:
        stats = {"version": VERSION, **tx.stats()}
    free = app.disk_free()
    stats.update(totalBytes=stats["blobBytes"] + stats["objectBytes"]
                 + stats["snapshotHistoryBytes"],
                 databaseBytes=app.store.size_bytes(), encryptionEnabled=app.sealer.enabled,
                 jwtSecretPersistent=app.config.admin_jwt_secret is not None,
                 database="postgresql" if app.store.local_dir is None else "sqlite",
                 diskFreeBytes=free, minFreeDiskBytes=app.config.min_free_disk_bytes,
                 diskLow=free is not None and free < 2 * app.config.min_free_disk_bytes,
                 uptimeSeconds=int(time.monotonic() - app.started))
    return json_response(stats)


@route("GET", "/admin/api/namespaces/{ns}/history")
def admin_history(request, ns):
    admin_session(request)
    query = request.query()
    try:
        limit = int(query.get("limit", "50"))
        before = int(query["before"]) if "before" in query else None
    except ValueError:
        raise HTTPError(400, "limit and before must be whole numbers (before: the "
                             "nextBefore of the previous page)") from None
    with request.app.store.read(snapshot=True) as tx:
        try:
            return json_response(namespace_history(tx, ns, limit, before))
        except LookupError as error:
            raise HTTPError(404, str(error)) from None


@route("GET", "/admin/api/namespaces/{ns}/history/{seq}")
def admin_version(request, ns, seq):
    admin_session(request)
    if not seq.isdigit():
        raise HTTPError(400, "the version must be a whole number, e.g. /history/12")
    with request.app.store.read(snapshot=True) as tx:
        try:
            return json_response(namespace_version(tx, ns, int(seq)))
        except LookupError as error:
            raise HTTPError(404, str(error)) from None


@route("POST", "/admin/api/namespaces/{ns}/rollback")
def admin_rollback(request, ns):
    admin_session(request)
    body = admin_body(request)
    seq, blob_seq = field(body, "seq", int, False), field(body, "blobSeq", int, False)
    dry_run = field(body, "dryRun", bool, False) or False
    if (seq is None) == (blob_seq is None):
        raise HTTPError(400, "send either 'seq' (a manifest version) or 'blobSeq' "
                             "(a snapshot version)")
    app = request.app
    try:
        with app.store.write() as tx:
            if seq is not None:
                result = rollback_manifest(tx, ns, seq, time.time(), dry_run=dry_run)
            else:
                result = rollback_blob(tx, ns, blob_seq, time.time(), app.config.blob_history,
                                       dry_run=dry_run)
            if not dry_run:
                trim_history(tx, ns, app.config.max_history_bytes)
    except LookupError as error:
        raise HTTPError(404, str(error)) from None
    except RollbackRefused as error:
        raise HTTPError(409, str(error)) from None
    if not dry_run:
        audit(request, "rollback", f"namespace={ns!r} "
                                   f"{'version' if seq is not None else 'snapshot'}="
                                   f"{seq if seq is not None else blob_seq}")
    return json_response(result)


@route("POST", "/admin/api/gc")
def admin_gc(request):
    admin_session(request)
    request.app.watch.forget(request.connection)  # a long pass gives way to syncs: no cut
    result = collect_garbage(request.app.store, request.app.config.object_retention_seconds)
    if result is None:
        raise HTTPError(409, "another oxsync process is running the cleanup right now; "
                             "try again in a minute")
    audit(request, "gc", f"objects={result['objectsRemoved']} bytes={result['bytesReclaimed']}")
    return json_response(result)


# -- OpenAPI 3.1 description of both APIs (GET /openapi.json) -------------------

def api_ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def api_answer(description: str, schema=None, media: str = "application/json") -> dict:
    body = {"description": description}
    if schema is not None:
        body["content"] = {media: {"schema": schema}}
    return body


def api_operation(summary: str, responses: dict, *, body=None, media=("application/json",),
                  params=(), security=None, tag: str = "sync") -> dict:
    """One operation; every one may also answer the JSON error."""
    operation = {"summary": summary, "tags": [tag], "parameters": list(params),
                 "responses": {**responses, "default": api_answer("an error", api_ref("Error"))}}
    if body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {m: {"schema": body} for m in media}}
    if security is not None:
        operation["security"] = security
    return operation


def api_path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


def api_list_params(sorts: dict, searched: str, **filters: dict) -> list[dict]:
    """The query parameters of a listing (see list_request), and its own filters."""
    def param(name, description, schema):
        return {"name": name, "in": "query", "required": False, "description": description,
                "schema": schema}
    newest = [sort for sort in sorts if sort in NEWEST_FIRST]
    return [param("q", f"case-insensitive substring of {searched}",
                  {"type": "string", "maxLength": MAX_SEARCH}),
            param("sort", "order of the rows" + (f"; {', '.join(newest)} default to desc"
                                                 if newest else ""),
                  {"type": "string", "enum": list(sorts)}),
            param("order", "asc or desc", {"type": "string", "enum": ["asc", "desc"]}),
            param("limit", f"rows per page (default {LIST_LIMIT})",
                  {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT}),
            param("cursor", "nextCursor of the page before, with the same q, sort, order "
                            "and filters", {"type": "string"}),
            *(param(name, schema.pop("description"), schema)
              for name, schema in filters.items())]


def api_listing(summary: str, name: str, sorts: dict, searched: str, **filters) -> dict:
    """A GET of one page of a listing (list_request, list_answer)."""
    page = {"type": "object", "required": [name, "total", "matched", "nextCursor"],
            "properties": {name: {"type": "array", "items": API_OBJECT},
                           "total": {"type": "integer", "description": "rows in all"},
                           "matched": {"type": "integer", "description": "rows matching"},
                           "nextCursor": {"type": ["string", "null"],
                                          "description": "null on the last page"}}}
    return api_operation(summary, {"200": api_answer(name, page)},
                         params=api_list_params(sorts, searched, **filters),
                         security=[{"session": [], "csrf": []}], tag="admin")


def api_device_listing() -> dict:
    return api_listing(
        "a page of devices, as their sync requests showed them", "devices", DEVICE_SORTS,
        "the device id, namespace, token name or last address",
        namespace={"type": "string", "description": "only this namespace"},
        status={"type": "string", "enum": list(DEVICE_STATUSES),
                "description": "ok: last result ok and not stale; problem: last result "
                               "not ok; stale: not seen for staleDays"},
        staleDays={"type": "number", "exclusiveMinimum": 0, "maximum": 36500,
                   "description": f"days without a request after which a device is "
                                  f"stale (default {STALE_DAYS})"})


API_NS = api_path_param("ns", "namespace, percent-encoded as one segment (team%2Fdefault)")
API_OBJECT = {"type": "object"}


def sync_api_paths() -> dict:
    path = api_path_param("path", "object path; '/' separates segments, each percent-encoded")
    etags = {"type": "string", "pattern": "\\S", "description": "'*' or entity tags"}
    conditional = [{"name": n, "in": "header", "required": False, "schema": etags}
                   for n in ("If-Match", "If-None-Match")]
    if_none_match = conditional[1:]
    blob_headers = [{"name": n, "in": "header", "required": n == "X-OxideTerm-Revision",
                     "schema": {"type": "string", "pattern": "\\S"} if n.endswith("Revision")
                     else {"type": "string"}}
                    for n in ("X-OxideTerm-Revision", "X-OxideTerm-Device-Id",
                              "X-OxideTerm-Section-Revisions")]
    binary, not_modified = {"type": "string", "format": "binary"}, api_answer("not modified")
    stored = {"200": api_answer("stored", api_ref("WriteAnswer"))}
    public = []
    return {
        "/v1/namespaces/{ns}/metadata": {
            "parameters": [API_NS],
            "get": api_operation("the namespace's metadata; {exists: false} when empty",
                                 {"200": api_answer("metadata", api_ref("Metadata")),
                                  "304": not_modified}, params=if_none_match),
            "put": api_operation("store a manifest (kept verbatim)", stored,
                                 body=api_ref("Manifest"), params=conditional)},
        "/v1/namespaces/{ns}/blob": {
            "parameters": [API_NS],
            "get": api_operation("the snapshot", {
                "200": api_answer("snapshot bytes", binary, SNAPSHOT_TYPE),
                "304": not_modified}, params=if_none_match),
            "put": api_operation("store a snapshot (compare-and-swap with If-Match)", stored,
                                 body=binary, media=(SNAPSHOT_TYPE, "application/octet-stream"),
                                 params=conditional + blob_headers)},
        "/v1/namespaces/{ns}/objects/{path}": {
            "parameters": [API_NS, path],
            "get": api_operation("an object", {"200": api_answer("object bytes", binary, "*/*"),
                                               "304": not_modified}, params=if_none_match),
            "put": api_operation("store an object", {
                "200": api_answer("replaced", api_ref("ObjectAnswer")),
                "201": api_answer("created", api_ref("ObjectAnswer"))}, body=binary,
                media=("application/octet-stream", "application/json"), params=conditional)},
        "/health": {"get": api_operation("liveness", {"200": api_answer("up", API_OBJECT)},
                                         security=public, tag="service")},
        "/ready": {"get": api_operation("readiness", {
            "200": api_answer("ready", API_OBJECT), "503": api_answer("degraded", API_OBJECT)},
            security=public, tag="service")},
    }


def admin_api_paths() -> dict:
    def admin(summary, answer="done", status="200", body=None, schema=None):
        return api_operation(summary, {status: api_answer(answer, schema or (
            api_ref("Ok") if answer == "done" else API_OBJECT))}, body=body,
            security=[{"session": [], "csrf": []}], tag="admin")

    token_id, username = api_path_param("id", "token id"), api_path_param("name", "username")
    version = api_path_param("seq", "version number (see the history)")
    hard = {"name": "hard", "in": "query", "required": False, "schema": {"type": "string"}}
    page = [{"name": name, "in": "query", "required": False, "schema": {"type": "integer"}}
            for name in ("limit", "before")]
    text = {"type": "string"}
    return {
        "/admin/api/login": {"post": api_operation(
            "log in; sets the session and CSRF cookies",
            {"200": api_answer("session", api_ref("Session"))}, security=[], tag="admin",
            body={"type": "object", "required": ["password"],
                  "properties": {"username": text, "password": text, "basePath": text}})},
        "/admin/api/logout": {"post": admin("log out; the session ends on the server too")},
        "/admin/api/me": {"get": admin("the session", "me", schema=api_ref("Session"))},
        "/admin/api/me/password": {"post": admin("change your password", body={
            "type": "object", "required": ["currentPassword", "newPassword"],
            "properties": {"currentPassword": text,
                           "newPassword": {"type": "string", "minLength": 8}}})},
        "/admin/api/stats": {"get": admin("counts, storage, warnings", "stats")},
        "/admin/api/users": {"get": admin("admin users", "users"),
                             "post": admin("create an admin user", "created", "201",
                                           API_OBJECT)},
        "/admin/api/users/{name}": {
            "parameters": [username],
            "patch": admin("enable, disable or reset password", "user", body=API_OBJECT),
            "delete": admin("delete an admin user")},
        "/admin/api/namespaces": {"get": api_listing("a page of namespaces with sizes",
                                                     "namespaces", NAMESPACE_SORTS, "the name"),
                                  "post": admin("create a namespace", "created", "201",
                                                API_OBJECT)},
        "/admin/api/namespaces/{ns}": {
            "parameters": [API_NS, hard],
            "delete": admin("soft-delete (hard=true purges a deleted namespace)", "gone")},
        "/admin/api/namespaces/{ns}/restore": {"parameters": [API_NS], "post": admin(
            "undo a soft delete", "restored")},
        "/admin/api/namespaces/{ns}/history": {"parameters": [API_NS, *page], "get": admin(
            "a page of versions with what changed (at most 100 and about 2 MiB; nextBefore "
            "starts the next), the current snapshot, kept snapshots", "history")},
        "/admin/api/namespaces/{ns}/history/{seq}": {"parameters": [API_NS, version], "get": admin(
            "one version in full and what changed against the one before", "version")},
        "/admin/api/namespaces/{ns}/rollback": {"parameters": [API_NS], "post": admin(
            "make an earlier version current", "rolled back", body=API_OBJECT)},
        "/admin/api/tokens": {"get": api_listing(
                                  "a page of tokens (never secrets)", "tokens", TOKEN_SORTS,
                                  "the name, namespace pattern or id", status={
                                      "type": "string", "description": "usable, disabled or "
                                      "expired", "enum": list(TOKEN_STATUSES)}),
                              "post": admin("create a token; the secret is in this answer only",
                                            "created", "201", API_OBJECT)},
        "/admin/api/tokens/{id}": {
            "parameters": [token_id],
            "patch": admin("rename, enable, disable, set expiry", "token", body=API_OBJECT),
            "delete": admin("delete a token")},
        "/admin/api/tokens/{id}/rotate": {"parameters": [token_id], "post": admin(
            "new secret; the old one stops", "rotated")},
        "/admin/api/conflicts": {"get": admin("recent 412s, newest first", "conflicts")},
        "/admin/api/devices": {"get": api_device_listing()},
        "/admin/api/gc": {"post": admin("apply object retention now", "removed")},
    }


def api_schemas() -> dict:
    text = {"type": "string"}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {
            "ok": {"const": False}, "error": {
                "type": "object", "required": ["code", "message"], "properties": {
                    "code": text, "message": text, "remoteEtag": text,
                    "remoteRevision": text}}}},
        "Metadata": {"type": "object", "required": ["exists"], "properties": {
            "exists": {"type": "boolean"}, "etag": text, "revision": text,
            "contentLength": {"type": "integer"}, "contentHash": text}},
        "Manifest": {"type": "object", "required": ["revision"], "properties": {
            "revision": {"type": "string", "minLength": 1}}},
        "WriteAnswer": {"type": "object", "required": ["ok", "etag"], "properties": {
            "ok": {"const": True}, "etag": text, "revision": text,
            "sectionRevisions": {"type": "object"}}},
        "ObjectAnswer": {"type": "object", "required": ["etag"], "properties": {
            "ok": {"const": True}, "etag": text}},
        "Ok": {"type": "object", "properties": {"ok": {"const": True}}},
        "Session": {"type": "object", "required": ["username", "expiresAt"], "properties": {
            "username": text, "expiresAt": text, "csrfToken": text}},
    }


@functools.cache
def openapi_document() -> bytes:
    """The OpenAPI 3.1 document, built once."""
    return json_body({
        "openapi": "3.1.0",
        "info": {"title": "oxsync", "version": VERSION,
                 "description": "Cloud Sync server for OxideTerm: the sync API the client "
                                "uses, and the admin API behind the admin page."},
        "paths": {**sync_api_paths(), **admin_api_paths()},
        "security": [{"bearer": []}, {"basic": []}],
        "components": {"schemas": api_schemas(), "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {"type": "http", "scheme": "basic",
                      "description": "the password part is the token"},
            "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
            "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"}}}})


@route("GET", "/openapi.json")
def openapi(request):
    return Response(200, openapi_document(), content_type="application/json")


# ---------------------------------------------------------------------------
# Reading the reference server's database: redb 2.x, file format v2 (read only)
# ---------------------------------------------------------------------------
#
# `import-reference` reads the reference server's redb file. The format is redb's
# docs/design.md at v2.6.3 (its v2 sections) plus what its source adds: a super header in
# the first page (a 64-byte header, then two 128-byte commit slots each naming the user,
# system and freed tree roots, a transaction id and an XXH3-128 slot checksum), then
# regions of pages. A page number packs region, index and order (a page of order n is 2**n base
# pages: that is how values larger than a page are stored). B-tree pages are leaves
# (type 1) or branches (type 2); every child pointer carries the XXH3-128 checksum of
# the child's used bytes, so a torn commit shows as a checksum that does not match.
# The reader only opens the file for reading and never writes to it.
#
# XXH3-128 comes from the optional `xxhash` package rather than a pure-Python copy: every
# page of the file is checked, which C does at disk speed and Python many times slower.
# Only import-reference needs it; serving stays standard library only.

REDB_MAGIC = b"redb\x1a\x0a\xa9\x0d\x0a"
REDB_HEADER_SIZE, REDB_SLOT_SIZE = 64, 128
REDB_LEAF, REDB_BRANCH = 1, 2
REDB_NORMAL_TABLE, REDB_MULTIMAP_TABLE = 3, 4
REDB_MAX_DEPTH = 64  # a B-tree of 4 KiB pages is nowhere near this deep


class RedbError(Exception):
    """A file that is not a readable redb v2 database; the message is one line."""


class RedbTorn(RedbError):
    """A checksum that does not match: a torn commit, or a damaged page."""


def redb_checksum(data) -> int:
    try:
        import xxhash
    except ImportError:
        raise RedbError("reading a redb file needs the 'xxhash' package (redb's XXH3-128 "
                        "checksums); install it with: python3 -m pip install xxhash") from None
    return xxhash.xxh3_128_intdigest(bytes(data))


def u32_at(data, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 4], "little")


def u64_at(data, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 8], "little")


def u128_at(data, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 16], "little")


def redb_tree_root(data, offset: int) -> tuple[int, int, int]:
    """A B-tree header: (root page number, root checksum, entry count)."""
    return u64_at(data, offset), u128_at(data, offset + 8), u64_at(data, offset + 24)


def redb_slot(data) -> dict:
    """One commit slot: the file format version, the roots, and whether its checksum holds."""
    version = data[0]
    if version == 1:
        raise RedbError("this is a redb file format v1 database (redb 1.x); the reference "
                        "server writes v2: open it once with the reference server to upgrade")
    if version == 3:
        raise RedbError("this is a redb file format v3 database (redb 3.x); import-reference "
                        "reads the v2 files of the reference server (redb 2.x)")
    if version != 2:
        raise RedbError(f"unknown redb file format version {version} (expected 2)")

    def root(flag: int, offset: int):
        return redb_tree_root(data, offset) if data[flag] else None
    return {"user": root(1, 8), "system": root(2, 40), "freed": root(3, 72),
            "transaction": u64_at(data, 104),
            "intact": u128_at(data, 112) == redb_checksum(data[:112])}


class RedbFile:
    """A redb v2 file opened read-only: its commit slots, tables and their entries."""

    def __init__(self, path: str):
        try:
            self.file = open(path, "rb")
        except OSError as error:
            raise RedbError(f"cannot read {path}: {error.strerror}") from None
        self.size = os.fstat(self.file.fileno()).st_size
        head = self.read_at(0, REDB_HEADER_SIZE + 2 * REDB_SLOT_SIZE, "the header")
        if head[:9] != REDB_MAGIC:
            raise RedbError(f"{path} is not a redb database (no redb magic number)")
        self.page_size = u32_at(head, 12)
        header_pages, max_data_pages = u32_at(head, 16), u32_at(head, 20)
        if self.page_size not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536) or \
                not max_data_pages:
            raise RedbError(f"{path} has a damaged redb header (page size {self.page_size})")
        self.region_data_start = header_pages * self.page_size
        self.region_size = (header_pages + max_data_pages) * self.page_size
        trailing_pages = u32_at(head, 28)
        layout_size = self.page_size + u32_at(head, 24) * self.region_size + (
            (header_pages + trailing_pages) * self.page_size if trailing_pages else 0)
        self.god_byte = head[9]
        # redb trusts the primary slot of a cleanly closed file; the reference never closes
        # its file, so its "recovery required" flag (0x02) is set and the slots are weighed.
        self.recovering = bool(self.god_byte & 2) or layout_size != self.size
        self.slots = [redb_slot(head[REDB_HEADER_SIZE + i * REDB_SLOT_SIZE:][:REDB_SLOT_SIZE])
                      for i in (0, 1)]
        self.slot = self.pick_slot()

    def close(self) -> None:
        self.file.close()

    def read_at(self, offset: int, length: int, what: str) -> bytes:
        if offset + length > self.size:
            raise RedbError(f"the file is truncated: {what} ends at byte {offset + length}, "
                            f"but the file has {self.size} bytes")
        self.file.seek(offset)
        return self.file.read(length)

    def page(self, number: int) -> bytes:
        order = number >> 59
        index, region = number & (0xFFFFF >> order), (number >> 20) & 0xFFFFF
        length = self.page_size << order
        offset = self.page_size + region * self.region_size + self.region_data_start + \
            index * length
        return self.read_at(offset, length, f"page {index} (order {order}) of region {region}")

    def pick_slot(self) -> dict:
        """The commit to read, the way redb repairs: the primary slot, or the other one
        when it holds a newer intact commit; then, when that commit's slot or trees fail
        their checksums (a torn commit), the other slot (not after a two-phase commit, nor
        in a file closed cleanly)."""
        primary = self.slots[self.god_byte & 1]
        secondary = self.slots[(self.god_byte & 1) ^ 1]
        primary_only = bool(self.god_byte & 4) or not self.recovering  # 4: two-phase commit
        if not primary_only and primary["intact"] and secondary["intact"] and \
                secondary["transaction"] > primary["transaction"]:
            primary, secondary = secondary, primary
        failures = []
        for slot in [primary] if primary_only else [primary, secondary]:
            try:
                if not slot["intact"]:
                    raise RedbTorn("its slot checksum fails")
                self.verify(slot)
            except RedbTorn as error:
                failures.append(f"commit {slot['transaction']}: {error}")
                continue
            self.torn = failures  # the newer commit passed over, if any
            return slot
        raise RedbError("the file is corrupted (no intact commit: " + "; ".join(failures) + ")")

    def verify(self, slot: dict) -> None:
        """Check every page of the commit's user, system and freed trees, as redb does."""
        for name in ("user", "system"):
            if slot[name]:
                for _, definition in self.entries(slot[name], None, None):
                    table = redb_table_definition(definition)
                    if table["root"]:
                        fixed_value = table["fixed_value"]
                        if table["type"] == REDB_MULTIMAP_TABLE:
                            fixed_value = None  # its nested trees are not ours to read
                        for _ in self.entries(table["root"], table["fixed_key"], fixed_value):
                            pass
        if slot["freed"]:
            for _ in self.entries(slot["freed"], 16, None):
                pass

    def tables(self) -> dict[str, dict]:
        """The user tables of the chosen commit: name -> definition."""
        if not self.slot["user"]:
            return {}
        return {key.decode("utf-8", "replace"): redb_table_definition(value)
                for key, value in self.entries(self.slot["user"], None, None)}

    def entries(self, root, fixed_key, fixed_value):
        """Every (key, value) of a B-tree in key order, checking each page's checksum."""
        stack = [(root[0], root[1], 0)]
        while stack:
            number, checksum, depth = stack.pop()
            if depth > REDB_MAX_DEPTH:
                raise RedbTorn("a B-tree is deeper than any real one (a loop of pages)")
            data = self.page(number)
            if data[0] == REDB_LEAF:
                pairs = redb_leaf(data, fixed_key, fixed_value)
                redb_check(data, pairs[-1][1].stop if pairs else 0, checksum, number)
                yield from ((data[k], data[v]) for k, v in pairs)
            elif data[0] == REDB_BRANCH:
                children, used = redb_branch(data, fixed_key)
                redb_check(data, used, checksum, number)
                stack.extend((child, sum_, depth + 1) for child, sum_ in reversed(children))
            else:
                raise RedbTorn(f"page {number:#x} is neither a leaf nor a branch")


def redb_check(data: bytes, used: int, expected: int, number: int) -> None:
    if not 0 < used <= len(data) or redb_checksum(data[:used]) != expected:
        raise RedbTorn(f"page {number:#x} does not match its checksum")


def redb_leaf(data: bytes, fixed_key, fixed_value) -> list[tuple[slice, slice]]:
    """A leaf page's (key, value) byte ranges."""
    count = int.from_bytes(data[2:4], "little")
    if not count:
        raise RedbTorn("a leaf page holds no entries")
    key_ends = 4  # the key end offsets, then the value end offsets, each when not fixed
    value_ends = 4 + (4 * count if fixed_key is None else 0)
    start = 4 + 4 * count * ((fixed_key is None) + (fixed_value is None))
    pairs, key_start = [], start
    for n in range(count):
        key_end = key_start + fixed_key if fixed_key is not None else \
            u32_at(data, key_ends + 4 * n)
        pairs.append([key_start, key_end])
        key_start = key_end
    value_start = key_start
    for n in range(count):
        value_end = value_start + fixed_value if fixed_value is not None else \
            u32_at(data, value_ends + 4 * n)
        pairs[n] = (slice(*pairs[n]), slice(value_start, value_end))
        value_start = value_end
    if any(not (p[0].start <= p[0].stop <= p[1].start <= p[1].stop <= len(data))
           for p in pairs):
        raise RedbTorn("a leaf page's offsets point outside it")
    return pairs


def redb_branch(data: bytes, fixed_key) -> tuple[list[tuple[int, int]], int]:
    """A branch page's children (page number, checksum) and how many bytes it uses."""
    keys = int.from_bytes(data[2:4], "little")
    if not keys:
        raise RedbTorn("a branch page holds no keys")
    children = keys + 1
    numbers = 8 + 16 * children
    children_list = [(u64_at(data, numbers + 8 * n), u128_at(data, 8 + 16 * n))
                     for n in range(children)]
    key_section = numbers + 8 * children
    if fixed_key is not None:
        used = key_section + fixed_key * keys
    else:
        used = u32_at(data, key_section + 4 * (keys - 1))
    return children_list, used


def redb_table_definition(data: bytes) -> dict:
    """A table tree value (redb's InternalTableDefinition, v2): type, root and widths."""
    if len(data) < 1 + 8 + 1 + 32 + 5 + 5 + 8 + 4 or data[0] not in (REDB_NORMAL_TABLE,
                                                                    REDB_MULTIMAP_TABLE):
        raise RedbTorn("a table definition is damaged")

    def optional_u32(offset):
        return u32_at(data, offset + 1) if data[offset] else None
    return {"type": data[0], "length": u64_at(data, 1),
            "root": redb_tree_root(data, 10) if data[9] else None,
            "fixed_key": optional_u32(42), "fixed_value": optional_u32(47)}


# -- import-reference: the reference server's records into an empty oxsync store -------

# The reference's tables (its src/db.rs): string keys, JSON values in camelCase, payloads
# as stored (with its ENCRYPTION_KEY: 12-byte nonce + ChaCha20-Poly1305, no associated data).
REFERENCE_REQUIRED_TABLES = ("metadata", "tokens")
SYNC_DATA_TABLES = ("namespaces", "payloads", "blobs", "blob_versions", "objects", "manifests",
                    "tokens", "conflicts")


def reference_json(value: bytes, what: str) -> dict:
    try:
        record = json.loads(value)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise RedbError(f"{what} is not a JSON object; is this the reference server's file?")
    return record


def reference_time(value) -> float | None:
    """The reference's RFC 3339 times (nanoseconds, '+00:00'); None when absent or unreadable."""
    try:
        return parse_rfc3339(value) if isinstance(value, str) else None
    except ValueError:
        return None


class ReferenceSource:
    """The reference server's database, as of its newest intact commit: the small records
    in memory, the payloads streamed from the file each time they are asked for."""

    def __init__(self, path: str, key: bytes | None):
        self.redb = RedbFile(path)
        self.tables = self.redb.tables()
        missing = [name for name in REFERENCE_REQUIRED_TABLES if name not in self.tables]
        if missing:
            raise RedbError(f"this redb file has no {' or '.join(missing)} table: it is not a "
                            "reference server database")
        self.unsealer = Sealer(key) if key else None
        self.metadata = {key[3:]: value for key, value in self.records("metadata")
                         if key.startswith("ns:")}
        self.deleted = {key: reference_time(reference_json(value, "a deleted namespace")
                                            .get("deletedAt")) or time.time()
                        for key, value in self.records("deleted_namespaces")}
        self.object_meta = {key: reference_json(value, f"object metadata {key!r}")
                            for key, value in self.records("object_metadata")}
        self.tokens, self.devices, self.conflicts = (
            [reference_json(value, f"{what} {key!r}") for key, value in self.records(table)]
            for table, what in (("tokens", "token"), ("devices", "device"),
                                ("sync_conflicts", "conflict")))
        self.admin_users = sum(1 for _ in self.records("admin_users"))
        self.login_addresses = sum(1 for _ in self.records("login_attempts"))

    def records(self, table: str):
        """(key, value) of one table in key order; nothing when the table does not exist."""
        definition = self.tables.get(table)
        if definition is None or definition["root"] is None:
            return
        if definition["type"] != REDB_NORMAL_TABLE or definition["fixed_key"] is not None:
            raise RedbError(f"table {table} does not have the reference server's shape")
        for key, value in self.redb.entries(definition["root"], None,
                                            definition["fixed_value"]):
            try:
                yield key.decode("utf-8"), value
            except UnicodeDecodeError:
                raise RedbError(f"table {table} has a key that is not UTF-8 text") from None

    def payloads(self):
        """('blob', namespace, '', bytes as stored) and ('object', namespace, path, ...)."""
        for key, value in self.records("blobs"):
            if key.startswith("ns:"):
                yield "blob", key[3:], "", value
        for key, value in self.records("objects"):
            namespace, separator, path = key[3:].partition("/obj:")
            if key.startswith("ns:") and separator:
                yield "object", namespace, path, value

    def open(self, stored: bytes, where: str) -> bytes:
        if self.unsealer is None:
            return stored
        try:
            return self.unsealer.open_foreign(stored)
        except SealError:
            raise RedbError(f"--reference-key does not open the {where}: it is not the key "
                            "the reference server ran with (or it ran without one)") from None

    def namespaces(self) -> list[str]:
        names = set(self.metadata) | set(self.deleted)
        names.update(key[3:].partition("/obj:")[0] for key in self.object_meta)
        return sorted(names)


def check_reference_key(source: ReferenceSource) -> None:
    """With --reference-key, the tokens' stored secrets (sealed with the reference's
    ENCRYPTION_KEY when it had one) must open to their digests: a wrong key stops here."""
    sealed = [token for token in source.tokens if token.get("encryptedToken")]
    if source.unsealer is None or not sealed:
        return
    for token in sealed:
        with contextlib.suppress(SealError, ValueError):
            raw = source.unsealer.open_foreign(base64.b64decode(token["encryptedToken"]))
            if hashlib.sha256(raw).hexdigest() == token.get("tokenHash"):
                return
    raise RedbError("--reference-key opens none of the reference's tokens: it is not the "
                    "ENCRYPTION_KEY the reference server ran with (or it ran without one)")


def check_reference(source: ReferenceSource) -> dict:
    """Everything that could stop the import, checked before anything is written: the key,
    every name and token, every payload -> the payloads' (size, sha256)."""
    check_reference_key(source)
    for namespace in source.namespaces():
        try:
            check_namespace(namespace)
        except BadName as error:
            raise RedbError(f"namespace {namespace!r} cannot move: {error}") from None
    for token in source.tokens:
        reference_token_fields(token, source.devices)
    return check_reference_payloads(source)


def check_reference_payloads(source: ReferenceSource) -> dict:
    """Open every payload once before anything is written -> (kind, namespace, path) ->
    (size, sha256). A sealed payload without the key, or the wrong key, stops here."""
    digests = {}
    for kind, namespace, path, stored in source.payloads():
        where = f"object {path!r} of namespace {namespace!r}" if path else \
            f"snapshot of namespace {namespace!r}"
        try:
            if path:
                check_object_path(path)
        except BadName as error:
            raise RedbError(f"the {where} cannot move: {error}") from None
        data = source.open(stored, where)
        digest = hashlib.sha256(data).hexdigest()
        if kind == "blob":
            if reference_metadata(source, namespace)[0] is None:
                raise RedbError(f"the {where} has no metadata (no etag)")
            expected = json.loads(source.metadata[namespace]).get("contentHash")
            if expected not in (None, digest):
                hint = "" if source.unsealer else ": the reference sealed its payloads; pass " \
                    "--reference-key with the ENCRYPTION_KEY it ran with"
                raise RedbError(f"the {where} does not match its contentHash{hint}")
        elif f"ns:{namespace}/obj:{path}" not in source.object_meta:
            raise RedbError(f"the {where} has no object_metadata record (no etag)")
        digests[kind, namespace, path] = (len(data), digest)
    return digests


def reference_token_fields(token: dict, devices: list[dict]) -> dict:
    """A reference token as oxsync's tokens row: same id, digest, pattern, rights and use;
    the name tells which device records name it."""
    what = f"token {token.get('name')!r} ({token.get('id')})"
    try:
        name = check_token_name(str(token.get("name") or token.get("id")))
        pattern = check_pattern(str(token.get("namespacePattern")))
        permissions = parse_permissions(",".join(token.get("permissions") or []))
    except ValueError as error:
        raise RedbError(f"{what} cannot move: {error}") from None
    if not re.fullmatch(r"[0-9a-f]{64}", str(token.get("tokenHash"))) or not token.get("id"):
        raise RedbError(f"{what} has no SHA-256 tokenHash or no id")
    attached = [d.get("name") for d in devices if d.get("tokenId") == token["id"]]
    if attached:
        label = f"{name} (device {', '.join(str(n) for n in attached)})"
        name = label if len(label) <= 100 else label[:99] + "…"
    counts = [token.get(c) for c in ("readCount", "writeCount")]
    return {"id": str(token["id"]), "name": name, "token_hash": token["tokenHash"],
            "namespace_pattern": pattern, "permissions": permissions,
            "enabled": int(token.get("enabled", True) is not False),
            "expires_at": reference_time(token.get("expiresAt")),
            "created_at": reference_time(token.get("createdAt")) or time.time(),
            "rotated_at": reference_time(token.get("rotatedAt")),
            "use_count": sum(c for c in counts if isinstance(c, int)),
            "last_used_at": reference_time(token.get("lastUsedAt")),
            "last_namespace": text_or_none(token.get("lastNamespace")),
            "last_ip": text_or_none(token.get("lastClientIp")),
            "last_client_version": text_or_none(token.get("lastClientVersion"))}


def reference_metadata(source: ReferenceSource, namespace: str) -> tuple[str | None, dict]:
    """The metadata text GET metadata answered (None for an empty namespace) and its JSON."""
    raw = source.metadata.get(namespace)
    if raw is None:
        return None, {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RedbError(f"the metadata of namespace {namespace!r} is not UTF-8") from None
    metadata = reference_json(raw, f"the metadata of namespace {namespace!r}")
    if not metadata.get("exists") or not isinstance(metadata.get("etag"), str):
        return None, metadata
    return text, metadata


def write_reference_namespaces(tx: Records, source: ReferenceSource, now: float) -> None:
    for namespace in source.namespaces():
        text, metadata = reference_metadata(source, namespace)
        times = [reference_time(metadata.get("uploadedAt"))] + [
            reference_time(meta.get("updatedAt")) for key, meta in source.object_meta.items()
            if key.startswith(f"ns:{namespace}/obj:")]
        times = [moment for moment in times if moment is not None]
        tx.import_namespace(namespace, text, metadata.get("etag") if text else None,
                            min(times, default=now), max(times, default=None),
                            source.deleted.get(namespace))
        if text and metadata.get("format"):  # a manifest: the namespace's first version
            tx.record_manifest(namespace, metadata, max(times, default=now), None)


def write_reference_payloads(tx: Records, source: ReferenceSource, sealer: Sealer,
                             digests: dict, now: float) -> None:
    for kind, namespace, path, stored in source.payloads():
        data = source.open(stored, f"{kind} of namespace {namespace!r}")
        size, digest = digests[kind, namespace, path]
        payload_id = tx.store_payload(*sealer.seal(data, payload_context(namespace, kind, path)))
        if kind == "blob":
            metadata = reference_metadata(source, namespace)[1]
            sections = metadata.get("sectionRevisions")
            tx.put_blob(namespace, reference_time(metadata.get("uploadedAt")) or now, payload_id,
                        text_or_none(metadata.get("revision")),
                        text_or_none(metadata.get("deviceId")),
                        None if sections is None else json_body(sections).decode(),
                        text_or_none(metadata.get("contentType")) or SNAPSHOT_TYPE, size, digest)
        else:
            meta = source.object_meta[f"ns:{namespace}/obj:{path}"]
            tx.put_object(namespace, path, payload_id, size, str(meta.get("etag")), None,
                          reference_time(meta.get("updatedAt")) or now)


def write_reference_records(tx: Records, source: ReferenceSource) -> None:
    """Tokens, conflicts (oldest first, so they list newest first as before) and devices."""
    for token in source.tokens:
        tx.import_token(**reference_token_fields(token, source.devices))
    for conflict in sorted(source.conflicts, key=lambda c: str(c.get("occurredAt"))):
        tx.import_conflict(
            at=reference_time(conflict.get("occurredAt")) or time.time(),
            namespace=str(conflict.get("namespace")), operation=str(conflict.get("operation")),
            path=text_or_none(conflict.get("objectPath")),
            device_id=text_or_none(conflict.get("deviceId")),
            **{column: text_or_none(conflict.get(field)) for column, field in (
                ("requested_etag", "requestedEtag"), ("requested_revision", "requestedRevision"),
                ("remote_etag", "remoteEtag"), ("remote_revision", "remoteRevision"))})
    if source.devices:  # every field the operator typed, kept beside the tokens' names
        tx.set_setting("reference_devices", json_body(source.devices).decode())


def import_reference(source: ReferenceSource, store: Store, sealer: Sealer,
                     digests: dict) -> None:
    """Everything in one transaction: an interrupted import leaves the store empty."""
    now = time.time()
    with store.write() as tx:
        filled = [table for table in SYNC_DATA_TABLES if tx.row_count(table)]
        if filled:
            raise StoreError(f"{store.describe()} is not empty (it has {', '.join(filled)}); "
                             "import-reference only fills an empty database")
        stored_check = tx.setting("key_check")
        if stored_check is not None and not (sealer.enabled and
                                             key_opens_check(sealer, stored_check)):
            raise StoreError(f"{store.describe()} was set up with another ENCRYPTION_KEY (key "
                             f"id {tx.setting('key_id')}); import with that key")
        if sealer.enabled and stored_check is None:
            store_key_check(tx, sealer)
        write_reference_namespaces(tx, source, now)
        write_reference_payloads(tx, source, sealer, digests, now)
        write_reference_records(tx, source)


def verify_reference_import(source: ReferenceSource, store: Store, sealer: Sealer,
                            digests: dict) -> None:
    """Re-read what was written: every count, metadata text, payload digest and token."""
    with store.read(snapshot=True) as tx:
        counts = {table: tx.row_count(table) for table in ("namespaces", "tokens",
                                                           "conflicts", "blobs", "objects")}
        got = {}
        for kind, namespace, path in digests:
            row = tx.blob(namespace) if kind == "blob" else tx.object(namespace, path)
            with contextlib.suppress(SealError, TypeError):  # TypeError: no such row
                data = sealer.open(tx.read_payload(row["payload_id"]), row["key_id"],
                                   payload_context(namespace, kind, path))
                got[kind, namespace, path] = (len(data), hashlib.sha256(data).hexdigest())
        metadata = {namespace: (row["metadata"], row["deleted_at"] is not None)
                    for namespace in source.namespaces()
                    for row in [tx.namespace(namespace)] if row}
        tokens = {row["id"]: row["token_hash"] for row in tx.tokens()}
    want = {"namespaces": len(source.namespaces()), "tokens": len(source.tokens),
            "conflicts": len(source.conflicts),
            "blobs": sum(1 for key in digests if key[0] == "blob"),
            "objects": sum(1 for key in digests if key[0] == "object")}
    problems = [f"{table}: {counts[table]} of {count}" for table, count in want.items()
                if counts[table] != count]
    problems += [f"{kind} {namespace} {path}".strip() for (kind, namespace, path), value
                 in digests.items() if got.get((kind, namespace, path)) != value]
    problems += [f"metadata of {namespace}" for namespace in source.namespaces()
                 if metadata.get(namespace) != (reference_metadata(source, namespace)[0],
                                                namespace in source.deleted)]
    problems += [f"token {token['id']}" for token in source.tokens
                 if tokens.get(str(token["id"])) != token["tokenHash"]]
    if problems:
        raise StoreError(f"the import into {store.describe()} does not match the reference "
                         f"file: {'; '.join(problems[:5])}")


def reference_summary(source: ReferenceSource, digests: dict) -> list[str]:
    """What moves (or would move), and what cannot."""
    sizes = collections.Counter()
    for (kind, _, _), (size, _) in digests.items():
        sizes[kind, "count"] += 1
        sizes[kind, "bytes"] += size
    deleted = ", ".join(sorted(source.deleted)) or "none"
    lines = [f"namespaces: {len(source.namespaces())} (soft-deleted, answering 410 until "
             f"restored: {deleted})",
             f"snapshots: {sizes['blob', 'count']} ({sizes['blob', 'bytes']} bytes); objects: "
             f"{sizes['object', 'count']} ({sizes['object', 'bytes']} bytes), each with its ETag",
             f"tokens: {len(source.tokens)}, each keeping its secret, pattern and permissions "
             f"({sum(1 for t in source.tokens if t.get('enabled') is False)} disabled)",
             f"conflicts: {len(source.conflicts)}; device records: {len(source.devices)}"]
    lines += [f"  device {d.get('name')!r} ({d.get('namespacePattern')}): token "
              f"{d.get('tokenId') or 'none'}" for d in source.devices]
    if source.redb.torn:
        lines.append("note: the newest commit in the file was torn (the server stopped while "
                     "writing it); the commit before it was read")
    lines.append(f"not moved: {source.admin_users} admin user(s) (the reference's bcrypt "
                 "passwords cannot become oxsync's scrypt): start oxsync with ADMIN_PASSWORD, "
                 "or run: oxsync admin set-password")
    lines.append(f"not moved: login throttling state ({source.login_addresses} address(es)); "
                 "oxsync starts with none")
    return lines


# ---------------------------------------------------------------------------
# 9. CLI: serve, and the operator commands (safe while the server runs)
# ---------------------------------------------------------------------------

class LineFormatter(logging.Formatter):
    """Text lines ('2026-12-02 08:05:21,123 INFO    oxsync: ...') or JSON lines. line()
    also formats access entries, which never become LogRecords (see LogWriter)."""

    def __init__(self, style: str = "text"):
        super().__init__()
        self.json_lines = style == "json"
        self._second = [None, ""]  # the last second formatted, and its text

    MAX_MESSAGE = 4000  # a backstop: client-supplied values are clipped where they are logged

    def format(self, record):
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(record.created, record.levelno, record.name,
                         clip(record.getMessage(), self.MAX_MESSAGE), exception)

    def line(self, created: float, level: int, name: str, message: str,
             exception: str | None = None) -> str:
        level_name = logging.getLevelName(level)
        if self.json_lines:
            fields = {"time": rfc3339(created), "level": level_name.lower(), "logger": name,
                      "message": message}
            if exception:
                fields["exception"] = exception
            return json.dumps(fields, ensure_ascii=False)
        second = int(created)
        if self._second[0] != second:  # strftime once a second, not once a line
            self._second = [second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))]
        line = f"{self._second[1]},{int(created % 1 * 1000):03d} {level_name:<7} {name}: {message}"
        return f"{line}\n{exception}" if exception else line


class Tally:
    """A count that request threads add to without a lock (see LOCK_FREE): next() on an
    itertools.count is one atomic step, and its repr, 'count(N)', reads N without adding."""

    def __init__(self):
        self._count = itertools.count()

    def add(self) -> None:
        next(self._count)

    def total(self) -> int:
        return int(repr(self._count)[len("count("):-1])


class RepeatLimit:
    """Warnings from the same line of code at most once per INTERVAL seconds; the next one
    that passes says how many were left out. (A flood of refused requests must not become a
    flood of log lines.) Errors are each written: every one may need the operator."""

    INTERVAL = 10.0

    def __init__(self):
        self.next_allowed: dict[tuple, float] = {}
        self.skipped: dict[tuple, int] = {}

    def __call__(self, record) -> bool:
        if record.levelno != logging.WARNING:
            return True
        key, now = (record.name, record.msg), time.monotonic()
        if now < self.next_allowed.get(key, 0.0):
            self.skipped[key] = self.skipped.get(key, 0) + 1
            return False
        if len(self.next_allowed) > 1000:  # messages built without a template: start over
            self.next_allowed.clear()
            self.skipped.clear()
        self.next_allowed[key] = now + self.INTERVAL
        skipped = self.skipped.pop(key, 0)
        if skipped:
            record.msg = f"{record.msg} ({skipped} more like this left out since the last one)"
        return True


class RecordQueue(logging.handlers.QueueHandler):
    """Hands records over as they are, without the handler lock (the queue is thread-safe;
    a lock that a preempted thread holds makes every other request thread wait)."""

    def __init__(self, writer: "LogWriter"):
        super().__init__(writer.records)
        self.writer, self.repeats = writer, RepeatLimit()

    def handle(self, record) -> bool:
        if self.repeats(record):
            self.writer.offer(record)
        return True


class LogWriter(threading.Thread):
    """Formats queued records and writes whatever arrived together in one write: one
    system call for many access lines instead of one (plus a flush) each. It waits
    PAUSE seconds after the first line of a batch, so a busy server wakes it a few
    times a second, not once per request (each wake-up is a turn of the GIL).

    At most LIMIT lines wait: when stderr is blocked (a pipe nobody reads) or too slow,
    the rest are dropped and counted, and the next write says so, once per DROP_NOTE
    seconds."""

    PAUSE, LIMIT, DROP_NOTE = 0.05, 10000, 10.0

    def __init__(self, handler: logging.StreamHandler):
        super().__init__(daemon=True, name="log-writer")
        self.records, self.handler = queue.SimpleQueue(), handler
        self.dropped, self.dropped_said, self.next_drop_note = Tally(), 0, 0.0

    def offer(self, item) -> None:
        if self.records.qsize() < self.LIMIT:
            self.records.put(item)
        else:
            self.dropped.add()

    def access(self, level: int, message: str, args: tuple) -> None:
        """An access line, queued as plain fields: a request thread need not build a
        LogRecord (that costs more than the rest of the line's work)."""
        self.offer((level, time.time(), message, args))

    def line(self, item) -> str:
        if not isinstance(item, tuple):
            return self.handler.format(item)
        level, created, message, args = item
        return self.handler.formatter.line(created, level, access_log.name, message % args)

    def drop_note(self) -> list[str]:
        """The 'dropped N lines' line, when lines were dropped and it is time to say so."""
        if time.monotonic() < self.next_drop_note:
            return []
        total = self.dropped.total()
        if total == self.dropped_said:
            return []
        count, self.dropped_said = total - self.dropped_said, total
        self.next_drop_note = time.monotonic() + self.DROP_NOTE
        return [self.handler.formatter.line(time.time(), logging.WARNING, log.name, f"log: "
                f"dropped {count} lines (log output is blocked or too slow)")]

    def run(self):
        while True:
            batch = [self.records.get()]
            time.sleep(self.PAUSE)
            with contextlib.suppress(queue.Empty):
                while len(batch) < self.LIMIT:
                    batch.append(self.records.get_nowait())
            lines = self.drop_note() + [self.line(item) for item in batch if item is not None]
            if lines:
                with contextlib.suppress(OSError, ValueError):
                    self.handler.stream.write("\n".join(lines) + "\n")
                    self.handler.stream.flush()
            if None in batch:
                return

    def stop(self, wait: float = 2.0) -> bool:
        """Write what is still queued, then end -> False when the log stayed blocked for
        `wait` seconds (the process must then exit without waiting on stderr)."""
        self.records.put(None)
        self.join(wait)
        return not self.is_alive()


def configure_logging(level: str = "INFO", style: str = "text",
                      background: bool = False) -> LogWriter | None:
    """Log lines to stderr. With `background`, request threads only put records on a
    queue and one thread writes them, so a busy server never queues on the stderr lock."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(style))
    root_logger = logging.getLogger()
    root_logger.setLevel(level)
    # No caller, thread or process lookups per record: the lines never show them
    # (the logging HOWTO's "Optimization" section names these switches).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if not background:
        handler.addFilter(RepeatLimit())
        root_logger.handlers[:] = [handler]
        return None
    writer = LogWriter(handler)
    root_logger.handlers[:] = [RecordQueue(writer)]
    writer.start()
    return writer


GC_INTERVAL = 3600


def housekeeping(app: App, stop: threading.Event) -> None:
    """Twice a second: cut overdue connections, add up metrics, token use and the device
    log, and checkpoint the WAL. Every 5 seconds: write token usage and the device log.
    Every hour (first a minute after startup): apply object retention. Within a minute:
    pick up a renewed TLS certificate."""
    last_flush, next_gc = time.monotonic(), time.monotonic() + 60
    next_certificate_check = time.monotonic() + 60
    while not stop.wait(0.5):
        app.watch.sweep()
        app.metrics.collect()
        app.usage.collect()
        app.devices.collect()
        now = time.monotonic()
        if app.certificate and now >= next_certificate_check:
            next_certificate_check = now + 60
            app.certificate.reload_if_changed()
        try:
            app.store.checkpoint()
            if now - last_flush >= 5:
                last_flush = now
                app.usage.flush(app.store)
                app.devices.flush(app.store)
            if now >= next_gc:
                next_gc = now + GC_INTERVAL
                collect_garbage(app.store, app.config.object_retention_seconds)
        except Exception as error:  # a busy or unreachable database: next time
            log.warning("housekeeping postponed: %s", error)


def drain(server: Server, app: App, grace: float = 10.0) -> None:
    """Stop accepting, close idle connections, let in-flight requests finish."""
    server.draining = True
    server.server_close()
    deadline = time.monotonic() + grace
    while True:
        app.watch.sweep(idle_too=True)
        busy = app.watch.busy()
        if not busy:
            return
        if time.monotonic() > deadline:
            log.warning("%d requests still running after %.0fs; stopping anyway", busy, grace)
            return
        time.sleep(0.05)


def run_server(config: Config, log_writer: LogWriter) -> int:
    certificate = load_certificate(config)
    store, sealer = open_store(config)
    if config.admin_password:
        try:
            outcome = apply_admin_password(store, config.admin_username, config.admin_password)
        except ValueError as error:
            raise ConfigError(f"ADMIN_PASSWORD: {error}") from None
        log.info("admin user %r %s", config.admin_username, {
            "created": "created from ADMIN_PASSWORD",
            "unchanged": "exists; ADMIN_PASSWORD is its password",
            "reset": "enabled and its password reset: ADMIN_PASSWORD has a new value",
            "kept": "kept as it is: ADMIN_PASSWORD is the value applied before, so a password "
                    "changed since (admin page or CLI) stays"}[outcome])
    if config.admin_jwt_secret is None:
        log.warning("ADMIN_JWT_SECRET is not set: admin sessions use a random secret and end "
                    "when the server restarts%s", "; with PostgreSQL and several oxsync "
                    "processes, a session also works only on the process that made it: give "
                    "every process the same ADMIN_JWT_SECRET" if config.database_url else "")
    app = App(config, store, sealer, log_writer, certificate)
    host, port = config.listen
    try:
        server = Server(app)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    redirect = start_redirect_listener(config) if config.redirect_http else None
    stop = threading.Event()
    threading.Thread(target=housekeeping, args=(app, stop), daemon=True,
                     name="housekeeping").start()

    def on_signal(signum, _frame):
        log.info("%s received: finishing requests in flight", signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if certificate:
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(
            target=certificate.reload, args=("SIGHUP",), daemon=True).start())
    log.info("oxsync %s listening on %s://%s:%d (database %s, encryption %s)", VERSION,
             "https" if certificate else "http", host, server.server_port, store.describe(),
             f"on, key id {sealer.key_id}" if sealer.enabled else "off")
    server.serve_forever(poll_interval=0.25)
    if redirect:
        redirect.shutdown()
    drain(server, app)
    stop.set()
    try:
        app.usage.flush(store)
        app.devices.flush(store)
        store.checkpoint(final=True)
    except Exception as error:  # the database busy or gone at shutdown
        log.error("could not write the last token usage or checkpoint the WAL: %s (the data "
                  "itself is safe; SQLite finishes the checkpoint on the next start)", error)
    store.close()
    log.info("stopped cleanly")
    return 0


def cli_store(args) -> Store:
    """The existing database named by --database-url or --db-path (a SQLite file is never
    created by a typo)."""
    settings = resolve_options(args, DB_OPTIONS)
    if settings["database_url"]:
        return PostgresStore(settings["database_url"])
    if not os.path.exists(settings["db_path"]):
        raise ConfigError(f"no database at {settings['db_path']}; start the server once, or "
                          "pass --db-path (env DB_PATH) or --database-url (env DATABASE_URL)")
    return SQLiteStore(settings["db_path"])


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    def text(value):
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, list):
            return ",".join(map(str, value))
        return "-" if value is None else str(value)
    cells = [[text(row[key]) for key, _ in columns] for row in rows]
    widths = [max([len(title)] + [len(line[i]) for line in cells])
              for i, (_, title) in enumerate(columns)]
    for line in [[title for _, title in columns]] + cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


class RedirectHandler(http.server.BaseHTTPRequestHandler):
    """The plain-HTTP port next to HTTPS: every request gets a 308 to the HTTPS URL."""

    protocol_version = "HTTP/1.1"
    timeout = 10

    def redirect(self):
        host = (self.headers.get("Host") or self.server.https_host).strip()
        host = host[:host.index("]") + 1] if host.startswith("[") and "]" in host \
            else host.partition(":")[0]
        port = self.server.https_port
        target = self.path if self.path.startswith("/") else "/"
        location = f"https://{host}{'' if port == 443 else f':{port}'}{target}"
        self.send_response(308)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = redirect

    def log_message(self, format, *args):
        log.debug("redirect: " + format, *clip_strings(args))


def start_redirect_listener(config: Config) -> http.server.ThreadingHTTPServer:
    host = config.listen[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("RedirectServer", (http.server.ThreadingHTTPServer,),
                        {"address_family": family, "daemon_threads": True})
    try:
        server = server_class((host, config.redirect_http), RedirectHandler)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{config.redirect_http} for the HTTP "
                          f"redirect: {error.strerror}") from None
    server.https_host, server.https_port = host, config.listen[1]
    threading.Thread(target=server.serve_forever, daemon=True, name="redirect").start()
    log.info("answering http://%s:%d with redirects to HTTPS", host, config.redirect_http)
    return server


def load_certificate(config: Config) -> Certificate | None:
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("TLS needs both --tls-cert (TLS_CERT_FILE) and --tls-key "
                          "(TLS_KEY_FILE)")
    if config.redirect_http and not config.tls_cert:
        raise ConfigError("--redirect-http (REDIRECT_HTTP_PORT) only makes sense with TLS")
    return Certificate(config.tls_cert, config.tls_key) if config.tls_cert else None


def cmd_serve(args) -> int:
    config = Config(**resolve_options(args, SERVER_OPTIONS))
    writer = configure_logging(config.log_level, config.log_format, background=True)
    code = 2
    try:
        code = run_server(config, writer)
        return code
    except (ConfigError, StoreError) as error:
        if config.log_format != "json":
            raise  # main() prints the usual one line
        log.critical("%s", error)  # a JSON line like every other
        return 2
    finally:
        if not writer.stop():  # stderr is blocked: a normal exit would flush it forever
            os._exit(code)


def cmd_token_create(args) -> int:
    settings = resolve_options(args, [TTL_OPTION])
    try:
        expires = parse_rfc3339(args.expires_at) if args.expires_at else None
        if expires is None and settings["default_token_ttl_seconds"]:
            expires = time.time() + settings["default_token_ttl_seconds"]
        with cli_store(args).write() as tx:
            token_id, raw = create_token(tx, args.name, args.namespace, args.permissions,
                                         expires)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(raw)
    print(f"created token {token_id} '{args.name}' for namespaces matching '{args.namespace}' "
          f"({parse_permissions(args.permissions)}), "
          f"{'expires ' + rfc3339(expires) if expires else 'never expires'}.\n"
          "It is shown only now. In OxideTerm: Settings > Cloud Sync > HTTP JSON, paste it "
          "as the token.", file=sys.stderr)
    return 0


def cli_listing(args, sorts: dict, default_sort: str, **filters) -> Listing:
    """The listing `--search`, `--sort` and `--limit` ask for (all rows without --limit)."""
    try:
        search = search_text(args.search or "")
    except ValueError as error:
        raise ConfigError(f"--search: {error}") from None
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    return Listing(args.sort or default_sort, (args.sort or default_sort) in NEWEST_FIRST,
                   search, {k: v for k, v in filters.items() if v is not None},
                   limit=args.limit)


def list_rows(page: Page, what: str) -> None:
    """Say on stderr when --search or --limit left rows out."""
    if len(page.rows) < page.total:
        matching = f", {page.matched} matching" if page.matched != page.total else ""
        print(f"{len(page.rows)} of {page.total} {what}{matching}", file=sys.stderr)


def cmd_token_list(args) -> int:
    listing = cli_listing(args, TOKEN_SORTS, "created", status=args.status)
    limit = resolve_options(args, [NAMESPACES_PER_TOKEN_OPTION])["max_namespaces_per_token"]
    with cli_store(args).read() as tx:
        page, names = tx.token_page(listing, time.time()), tx.token_names()
        items = token_items(tx, page.rows, limit)
    list_rows(page, "tokens")
    tokens = flag_lookalikes(items, "token", names)
    if args.json:
        print(json.dumps(tokens, indent=2))
    else:
        for token in tokens:
            token["namespaces"] = f"{token['namespaceCount']}/{limit or 'no limit'}"
        print_table(tokens, [("id", "ID"), ("name", "NAME"), ("namespacePattern", "NAMESPACES"),
                             ("permissions", "PERMISSIONS"), ("enabled", "ENABLED"),
                             ("expiresAt", "EXPIRES"), ("namespaces", "CREATED NS"),
                             ("useCount", "USES"),
                             ("lastUsedAt", "LAST USED"), ("lastNamespace", "LAST NAMESPACE"),
                             ("lastIp", "LAST IP"), ("lastClientVersion", "CLIENT"),
                             ("nameWarning", "NAME WARNING")])
    return 0


def cmd_token_change(args) -> int:
    with cli_store(args).write() as tx:
        if args.action == "rotate":
            raw = rotate_token(tx, args.id)
            found = raw is not None
        elif args.action == "delete":
            found = tx.delete_token(args.id)
        else:
            found = tx.update_token(args.id, enabled=args.action == "enable")
    if not found:
        print(f"oxsync: no token with id {args.id!r} (see: oxsync token list)", file=sys.stderr)
        return 1
    if args.action == "rotate":
        print(raw)
        print(f"token {args.id} rotated: the old secret no longer works; paste this new one "
              "into OxideTerm.", file=sys.stderr)
    else:
        print(f"token {args.id} {args.action}d", file=sys.stderr)
    return 0


def use_of(used: int, limit: int | None) -> str:
    """'1.2 MiB of 256.0 MiB (0%)', or '1.2 MiB (no limit)'."""
    if not limit:
        return f"{in_mib(used)} (no limit)"
    return f"{in_mib(used)} of {in_mib(limit)} ({used * 100 // limit}%)"


def cmd_namespace_list(args) -> int:
    listing = cli_listing(args, NAMESPACE_SORTS, "name")
    settings = resolve_options(args, [NAMESPACE_BYTES_OPTION, HISTORY_BYTES_OPTION])
    with cli_store(args).read() as tx:
        page, names = tx.namespace_page(listing), tx.namespace_names()
    list_rows(page, "namespaces")
    views = flag_lookalikes([with_limits(namespace_view(row), settings["max_namespace_bytes"],
                                         settings["max_history_bytes"]) for row in page.rows],
                            "namespace", names)
    if args.json:
        print(json.dumps(views, indent=2))
    else:
        for view in views:
            view["use"] = use_of(view["usedBytes"], view["maxBytes"])
            view["historyUse"] = use_of(view["historyBytes"], view["maxHistoryBytes"])
        print_table(views, [("name", "NAMESPACE"), ("deleted", "DELETED"), ("format", "FORMAT"),
                            ("revision", "REVISION"), ("deviceId", "DEVICE"),
                            ("blobBytes", "BLOB BYTES"), ("objectCount", "OBJECTS"),
                            ("objectBytes", "OBJECT BYTES"),
                            ("snapshotHistoryBytes", "HISTORY BYTES"),
                            ("totalBytes", "TOTAL BYTES"), ("use", "USE (MAX_NAMESPACE_BYTES)"),
                            ("historyUse", "HISTORY (MAX_HISTORY_BYTES)"),
                            ("lastWriteAt", "LAST WRITE"), ("nameWarning", "NAME WARNING")])
    return 0


def cmd_device_list(args) -> int:
    try:
        namespace = args.namespace and check_namespace(args.namespace)
        days = stale_days(args.stale_days)
    except BadName as error:
        raise ConfigError(f"--namespace: {error}") from None
    except ValueError as error:
        raise ConfigError(f"--stale-days {args.stale_days!r}: {error}") from None
    listing = cli_listing(args, DEVICE_SORTS, "lastSeen", namespace=namespace,
                          status=args.status, staleDays=days)
    page, devices = device_listing(cli_store(args), listing)
    list_rows(page, "devices")
    if args.json:
        print(json.dumps(devices, indent=2))
        return 0
    for device in devices:
        device["flags"] = ",".join(f for f in ("stale", "problem") if device[f]) or "-"
        device["result"] = device["lastResult"] + (
            f" {device['lastStatus']}" if device["lastResult"] != "ok" else "")
    print_table(devices, [("namespace", "NAMESPACE"), ("deviceId", "DEVICE"),
                          ("tokenName", "TOKEN"), ("lastSeenAt", "LAST SEEN"),
                          ("result", "LAST RESULT"), ("lastResultAt", "SINCE"),
                          ("clientVersion", "CLIENT"), ("lastIp", "LAST IP"),
                          ("flags", "FLAGS")])
    return 0


def cmd_namespace_change(args) -> int:
    try:
        name = check_namespace(args.namespace)
    except BadName as error:
        raise ConfigError(str(error)) from None
    with cli_store(args).write() as tx:
        row = tx.lock_namespace(name)
        if args.action == "create":
            message = "created" if tx.create_namespace(name, time.time()) else None
        elif row is None:
            message = None
        elif args.action == "purge":
            if row["deleted_at"] is None:
                print(f"oxsync: namespace '{name}' is not deleted; run 'oxsync namespace delete "
                      f"{name}' first", file=sys.stderr)
                return 1
            message = f"purged ({tx.purge_namespace(name)} bytes freed)"
        else:
            tx.set_namespace_deleted(name, args.action == "delete")
            message = "deleted (data kept; restore or purge it later)" \
                if args.action == "delete" else "restored"
    if message is None:
        problem = "already exists" if args.action == "create" else "does not exist"
        print(f"oxsync: namespace '{name}' {problem}", file=sys.stderr)
        return 1
    print(f"namespace '{name}' {message}", file=sys.stderr)
    return 0


def read_new_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New admin password: ")
    if getpass.getpass("Repeat it: ") != first:
        raise ConfigError("the passwords differ")
    return first


def cmd_admin_set_password(args) -> int:
    username = args.username or os.environ.get("ADMIN_USERNAME") or "admin"
    store = cli_store(args)
    try:
        outcome = set_admin_password(store, username, read_new_password())
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(f"admin user '{username}' {outcome}", file=sys.stderr)
    return 0


def read_history(args, load) -> dict | None:
    """load(records) in one snapshot of the store named by args -> its answer, or None
    after saying why there is none (no such namespace or version)."""
    try:
        with cli_store(args).read(snapshot=True) as tx:
            return load(tx)
    except LookupError as error:
        print(f"oxsync: {error}", file=sys.stderr)
        return None


def version_flags(version: dict, suspicious: str = "SUSPICIOUS", missing: bool = True) -> list:
    return [flag for flag, on in (
        ("current", version["current"]), (suspicious, version["suspicious"]),
        (f"rollback of {version['rollbackOf']}", version["rollbackOf"]),
        (f"{version['missingObjects']} objects missing",
         missing and version["missingObjects"])) if on]


def cmd_namespace_history(args) -> int:
    history = read_history(args, lambda tx: namespace_history(tx, args.namespace, args.limit,
                                                              args.before))
    if history is None:
        return 1
    if args.json:
        print(json.dumps(history, indent=2))
        return 0
    for version in history["versions"]:
        version["flags"] = ", ".join(version_flags(version))
    print_table(history["versions"], [("seq", "VERSION"), ("createdAt", "TIME"),
                                      ("revision", "REVISION"), ("deviceId", "DEVICE"),
                                      ("flags", "FLAGS"), ("summary", "CHANGES")])
    if history["blobVersions"]:
        print("\nearlier snapshots (restore with: namespace rollback NS --to-blob VERSION)")
        print_table(history["blobVersions"], [("seq", "VERSION"), ("createdAt", "TIME"),
                                              ("revision", "REVISION"), ("deviceId", "DEVICE"),
                                              ("size", "BYTES")])
    if history["hasMore"]:
        print(f"\nolder versions: oxsync namespace history {args.namespace} --before "
              f"{history['nextBefore']}")
    print(f"\nsee one version and what it changed: oxsync namespace show {args.namespace} "
          "VERSION")
    return 0


def cmd_namespace_show(args) -> int:
    version = read_history(args, lambda tx: namespace_version(tx, args.namespace,
                                                              args.version))
    if version is None:
        return 1
    if args.json:
        print(json.dumps(version, indent=2))
        return 0
    before = version["previousSeq"]
    flags = version_flags(version, "SUSPICIOUS: records dropped", missing=False)
    print(f"namespace {args.namespace!r} version {version['seq']}"
          f"{' (' + ', '.join(flags) + ')' if flags else ''}\n"
          f"  time      {version['createdAt']}\n  revision  {version['revision']}\n"
          f"  device    {version['deviceId'] or '-'}\n"
          f"  token     {version['tokenName'] or version['tokenId'] or '-'}\n"
          f"  against   {'version ' + str(before) if before else 'nothing (first version)'}"
          f"\n  changes   {version['summary']}")
    rows = [{"section": name, "before": counts["before"], "after": counts["after"]}
            for name, counts in version["recordCounts"].items()]
    if rows:
        print("\nrecord counts")
        print_table(rows, [("section", "SECTION"), ("before", "BEFORE"), ("after", "AFTER")])
    revisions = [{"section": name, "before": change["before"], "after": change["after"]}
                 for name, change in version["sectionRevisions"].items()]
    if revisions:
        print("\nsection revisions")
        print_table(revisions, [("section", "SECTION"), ("before", "BEFORE"),
                                ("after", "AFTER")])
    if version["scopeChange"]:
        print(f"\nscope {json.dumps(version['scopeChange']['before'])} → "
              f"{json.dumps(version['scopeChange']['after'])}")
    for path in version["missingObjectPaths"]:
        print(f"missing object: {path}")
    return 0


def cmd_namespace_rollback(args) -> int:
    settings = resolve_options(args, [BLOB_HISTORY_OPTION, HISTORY_BYTES_OPTION])
    store, dry_run = cli_store(args), not args.yes
    try:
        with store.write() as tx:
            if args.to is not None:
                result = rollback_manifest(tx, args.namespace, args.to, time.time(),
                                           dry_run=dry_run)
            else:
                result = rollback_blob(tx, args.namespace, args.to_blob, time.time(),
                                       settings["blob_history"], dry_run=dry_run)
            if not dry_run:
                trim_history(tx, args.namespace, settings["max_history_bytes"])
    except (LookupError, RollbackRefused) as error:
        print(f"oxsync: {error}", file=sys.stderr)
        return 1
    target = f"version {args.to}" if args.to is not None else f"snapshot version {args.to_blob}"
    if dry_run:
        warning = " (WARNING: this drops records compared with now)" \
            if result.get("suspicious") else ""
        print(f"dry run: rolling '{args.namespace}' back to {target} would change: "
              f"{result['summary']}{warning}\nnothing was changed; add --yes to do it")
    else:
        print(f"'{args.namespace}' rolled back to {target}; new etag {result['etag']}"
              + (f" (recorded as version {result['seq']})" if "seq" in result else ""))
    return 0


def cmd_gc(args) -> int:
    settings = resolve_options(args, [RETENTION_OPTION])
    result = collect_garbage(cli_store(args), settings["object_retention_seconds"])
    if result is None:
        print("oxsync: another oxsync process is applying retention right now; nothing was "
              "done", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def cmd_backup(args) -> int:
    digest = backup_database(cli_store(args), args.to, Progress("backup"))
    print(f"backup written to {args.to} (sha256 {digest}, sidecar {args.to}.sha256)",
          file=sys.stderr)
    return 0


def cmd_verify_backup(args) -> int:
    print(verify_backup(args.file))
    return 0


def cmd_copy_store(args) -> int:
    source, progress = cli_store(args), Progress("copy-store")
    if re.match(r"postgres(ql)?://", args.to):
        target = PostgresStore(args.to)
        counts, where = copy_store(source, target, progress), target.describe()
    else:
        where = args.to
        counts = copy_to_sqlite(source, where, progress)
    print(f"copied {source.describe()} to {where} and checked every table: "
          + ", ".join(f"{count} {table}" for table, count in counts.items() if count),
          file=sys.stderr)
    return 0


def cmd_import_reference(args) -> int:
    settings = resolve_options(args, [*DB_OPTIONS, KEY_OPTION, REFERENCE_KEY_OPTION])
    sealer = Sealer(settings["encryption_key"])
    try:
        source = ReferenceSource(args.source, settings["reference_key"])
        try:
            digests = check_reference(source)
            if args.dry_run:
                print("dry run, nothing written; this would move:")
                print("\n".join(reference_summary(source, digests)))
                return 0
            store = PostgresStore(settings["database_url"]) if settings["database_url"] \
                else SQLiteStore(settings["db_path"])
            import_reference(source, store, sealer, digests)
            if not sealer.enabled:
                log.warning("ENCRYPTION_KEY is not set: the imported payloads are stored in "
                            "plaintext")
            verify_reference_import(source, store, sealer, digests)
        finally:
            source.redb.close()
    except RedbError as error:
        raise StoreError(f"{args.source}: {error}") from None
    print(f"imported {args.source} into {store.describe()}:")
    print("\n".join(reference_summary(source, digests)))
    print("checked: every count, metadata, payload digest and token matches the reference "
          "file; start oxsync on the reference server's address and devices sync as before")
    return 0


def cmd_admin_unlock(args) -> int:
    with cli_store(args).write() as tx:
        removed = tx.clear_login_failures(args.ip)
    print(f"cleared failed logins of {args.ip or 'every address'} ({removed} "
          f"address{'es' if removed != 1 else ''})", file=sys.stderr)
    return 0


def cmd_restore(args) -> int:
    settings = resolve_options(args, DB_OPTIONS)
    if settings["database_url"]:
        raise ConfigError("restore replaces a SQLite file; to load a backup into PostgreSQL, "
                          "copy it into an empty database: oxsync copy-store --db-path BACKUP "
                          "--to postgresql://...")
    path = settings["db_path"]
    restore_database(args.source, path, args.force)
    print(f"restored {path} from {args.source}", file=sys.stderr)
    return 0


def required_key(settings: dict, name: str, option: str) -> bytes:
    if not settings[name]:
        raise ConfigError(f"{option} is required for this command")
    return settings[name]


def cmd_rotate_key(args) -> int:
    settings = resolve_options(args, [KEY_OPTION, NEW_KEY_OPTION])
    old = required_key(settings, "encryption_key", "--encryption-key (env ENCRYPTION_KEY)")
    new = required_key(settings, "new_key", "--new-key (env NEW_ENCRYPTION_KEY)")
    store = cli_store(args)
    store.hold(exclusive=True)
    count = rotate_key(store, old, new)
    print(f"{count} payloads re-sealed with key id {key_id_of(new)}; start the server with "
          "the new ENCRYPTION_KEY", file=sys.stderr)
    return 0


def cmd_encrypt_existing(args) -> int:
    settings = resolve_options(args, [KEY_OPTION])
    key = required_key(settings, "encryption_key", "--encryption-key (env ENCRYPTION_KEY)")
    count = encrypt_existing(cli_store(args), key)
    print(f"{count} plaintext payloads sealed with key id {key_id_of(key)}", file=sys.stderr)
    return 0


DB_OPTION, URL_OPTION, KEY_OPTION = STORE_OPTIONS
DB_OPTIONS = [DB_OPTION, URL_OPTION]
NEW_KEY_OPTION = Option("NEW_ENCRYPTION_KEY", "--new-key", parse_key, "",
                        "the key to re-seal every payload with (64 hex characters)")
REFERENCE_KEY_OPTION = Option("REFERENCE_ENCRYPTION_KEY", "--reference-key", parse_key, "",
                              "the reference server's ENCRYPTION_KEY, if it had one "
                              "(64 hex characters)")
(TTL_OPTION, RETENTION_OPTION, BLOB_HISTORY_OPTION, NAMESPACE_BYTES_OPTION,
 HISTORY_BYTES_OPTION, NAMESPACES_PER_TOKEN_OPTION) = (
    next(o for o in SERVER_OPTIONS if o.env == name)
    for name in ("DEFAULT_TOKEN_TTL_SECONDS", "OBJECT_RETENTION_SECONDS", "BLOB_HISTORY",
                 "MAX_NAMESPACE_BYTES", "MAX_HISTORY_BYTES", "MAX_NAMESPACES_PER_TOKEN"))
# The reference server's flags, kept as aliases of the commands.
LEGACY_FLAGS = {"--backup-to": ["backup", "--to"], "--restore-from": ["restore", "--from"],
                "--verify-backup": ["verify-backup"]}


LEGACY_ENVIRONMENT = {"BACKUP_TO": "--backup-to", "RESTORE_FROM": "--restore-from",
                      "VERIFY_BACKUP": "--verify-backup"}


def legacy_environment(argv: list[str]) -> list[str]:
    """BACKUP_TO, RESTORE_FROM or VERIFY_BACKUP set for a run that would serve: the
    reference's one-shot maintenance runs (how Docker users run them), as their flags."""
    if argv and argv[0] != "serve" and not argv[0].startswith("-"):
        return argv  # an explicit command other than serve
    environment = {**read_dotenv(), **os.environ}
    chosen = [f"{flag}={environment[name].strip()}" for name, flag in LEGACY_ENVIRONMENT.items()
              if environment.get(name, "").strip()]
    if len(chosen) > 1:
        raise ConfigError("set only one of BACKUP_TO, RESTORE_FROM and VERIFY_BACKUP")
    return chosen + argv


def rewrite_legacy_flags(argv: list[str]) -> list[str]:
    for index, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag in LEGACY_FLAGS:
            if not equals:
                value = argv[index + 1] if index + 1 < len(argv) else ""
            rest = argv[:index] + argv[index + (1 if equals else 2):]
            rest = [a for a in rest if a != "serve"]
            return LEGACY_FLAGS[flag] + [value] + rest
    return argv


def add_command(parent, name: str, help_text: str, run, options=tuple(DB_OPTIONS)):
    sub = parent.add_parser(name, help=help_text, description=help_text)
    add_options(sub, list(options))
    sub.set_defaults(run=run)
    return sub


def add_group(commands, name: str, help_text: str):
    """A command with actions of its own (oxsync token create, ...)."""
    group = commands.add_parser(name, help=help_text, description=help_text)
    return group.add_subparsers(dest="action", metavar="ACTION", required=True)


def add_list_command(actions, help_text: str, run, sorts: dict, searched: str,
                     options=tuple(DB_OPTIONS)):
    """A `list` action with --search, --sort, --limit and --json."""
    listing = add_command(actions, "list", help_text, run, options)
    listing.add_argument("--search", metavar="TEXT",
                         help=f"only {searched} TEXT (any case)")
    newest = [sort for sort in sorts if sort in NEWEST_FIRST]
    listing.add_argument("--sort", choices=list(sorts), help="order of the rows" + (
        f" ({', '.join(newest)}: largest or newest first)" if newest else ""))
    listing.add_argument("--limit", type=int, metavar="N", help="at most N rows (default: all)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    return listing


def add_token_commands(commands) -> None:
    actions = add_group(commands, "token", "create and manage API tokens")
    create = add_command(actions, "create", "create a token; prints the secret once on stdout",
                         cmd_token_create, (*DB_OPTIONS, TTL_OPTION))
    create.add_argument("--name", required=True, help="what the token is for, e.g. 'laptop'")
    create.add_argument("--namespace", required=True, metavar="PATTERN",
                        help="'*', an exact namespace, or a prefix ending in '*' ('team/*')")
    create.add_argument("--permissions", default="read,write",
                        help="read, write or read,write (default)")
    create.add_argument("--expires-at", metavar="RFC3339",
                        help="expiry such as 2027-06-30T00:00:00Z (default: "
                             "DEFAULT_TOKEN_TTL_SECONDS, else never)")
    listing = add_list_command(actions, "list tokens and their use", cmd_token_list,
                               TOKEN_SORTS, "tokens whose name, namespace pattern or id contains",
                               (*DB_OPTIONS, NAMESPACES_PER_TOKEN_OPTION))
    listing.add_argument("--status", choices=list(TOKEN_STATUSES),
                         help="only tokens that are usable, disabled, or expired")
    for action, text in (("enable", "enable a token"), ("disable", "disable a token"),
                         ("rotate", "give a token a new secret; the old one stops working"),
                         ("delete", "delete a token")):
        add_command(actions, action, text, cmd_token_change).add_argument(
            "id", help="token id (see: oxsync token list)")


def add_namespace_commands(commands) -> None:
    actions = add_group(commands, "namespace", "list and manage namespaces")
    add_list_command(actions, "list namespaces with sizes, use against the quotas and last "
                     "sync", cmd_namespace_list, NAMESPACE_SORTS, "namespaces whose name contains",
                     (*DB_OPTIONS, NAMESPACE_BYTES_OPTION, HISTORY_BYTES_OPTION))
    for action, text in (("create", "create an empty namespace"),
                         ("delete", "soft-delete: sync answers 410, data is kept"),
                         ("restore", "undo a soft delete"),
                         ("purge", "remove a soft-deleted namespace and all its data")):
        add_command(actions, action, text, cmd_namespace_change).add_argument(
            "namespace", help="namespace name, e.g. team/default")
    history = add_command(actions, "history", "list a namespace's versions (each accepted "
                          "manifest) with what changed", cmd_namespace_history)
    history.add_argument("namespace", help="namespace name")
    history.add_argument("--limit", type=int, default=50,
                         help=f"newest N versions (50; at most {HISTORY_PAGE_VERSIONS}, and "
                              f"about {HISTORY_PAGE_BYTES // MiB} MiB of them)")
    history.add_argument("--before", type=int, metavar="VERSION",
                         help="only versions older than this one (the next page)")
    history.add_argument("--json", action="store_true",
                         help="print JSON (with each version's full manifest)")
    show = add_command(actions, "show", "show one version in full and what it changed "
                       "against the version before it", cmd_namespace_show)
    show.add_argument("namespace", help="namespace name")
    show.add_argument("version", type=int, help="version number (see: namespace history)")
    show.add_argument("--json", action="store_true", help="print JSON")
    rollback = add_command(actions, "rollback", "make an earlier version current again "
                           "(a dry run unless --yes)", cmd_namespace_rollback,
                           (*DB_OPTIONS, BLOB_HISTORY_OPTION, HISTORY_BYTES_OPTION))
    rollback.add_argument("namespace", help="namespace name")
    target = rollback.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", type=int, metavar="VERSION", help="manifest version")
    target.add_argument("--to-blob", type=int, metavar="VERSION", help="snapshot version")
    rollback.add_argument("--yes", action="store_true", help="do it (default: dry run)")


def add_device_commands(commands) -> None:
    actions = add_group(commands, "device", "devices as their sync requests showed them")
    listing = add_list_command(actions, "list devices: token, last seen, client version, "
                               "address and last result", cmd_device_list, DEVICE_SORTS,
                               "devices whose id, namespace, token name or address contains")
    listing.add_argument("--namespace", help="only devices of this namespace")
    listing.add_argument("--status", choices=list(DEVICE_STATUSES),
                         help="ok: last result ok and recent; problem: last result not ok; "
                              "stale: no request for --stale-days")
    listing.add_argument("--stale-days", default=str(STALE_DAYS), metavar="DAYS",
                         help=f"days without a request that make a device stale "
                              f"(default {STALE_DAYS})")


def add_maintenance_commands(commands) -> None:
    add_command(commands, "gc", "apply object retention now; prints what was removed", cmd_gc,
                (*DB_OPTIONS, RETENTION_OPTION))
    add_command(commands, "backup", "copy the database into one SQLite file while the "
                "server runs, plus a .sha256", cmd_backup).add_argument(
        "--to", required=True, metavar="FILE",
        help="backup file to write (a missing folder is created, mode 0700)")
    add_command(commands, "copy-store", "copy everything into an empty database (PostgreSQL "
                "or SQLite), sealed payloads as they are, then check every table; progress "
                "on stderr",
                cmd_copy_store).add_argument(
        "--to", required=True, metavar="URL_OR_FILE",
        help="a postgresql:// URL or a SQLite file path; it must be empty")
    imports = add_command(commands, "import-reference", "move everything from the reference "
                          "server's database file (redb) into an empty database, then check it",
                          cmd_import_reference, (*DB_OPTIONS, KEY_OPTION, REFERENCE_KEY_OPTION))
    imports.add_argument("--from", dest="source", required=True, metavar="FILE",
                         help="the reference server's sync.db (a copy; it is only read)")
    imports.add_argument("--dry-run", action="store_true",
                         help="read and check everything, print what would move, write nothing")
    add_command(commands, "verify-backup", "check a backup's .sha256 and SQLite integrity",
                cmd_verify_backup, ()).add_argument("file", help="backup file")
    restore = add_command(commands, "restore", "verify a backup, then copy it over the "
                          "database", cmd_restore)
    restore.add_argument("--from", dest="source", required=True, metavar="FILE",
                         help="backup file")
    restore.add_argument("--force", action="store_true",
                         help="replace an existing database (stop the server first)")
    add_command(commands, "rotate-key", "re-seal every payload with a new key (stop the server "
                "first; resumable)", cmd_rotate_key, (*DB_OPTIONS, KEY_OPTION, NEW_KEY_OPTION))
    add_command(commands, "encrypt-existing", "seal payloads stored before encryption was "
                "turned on (resumable)", cmd_encrypt_existing, (*DB_OPTIONS, KEY_OPTION))


def add_admin_commands(commands) -> None:
    actions = add_group(commands, "admin", "manage admin page users")
    add_command(actions, "set-password", "create an admin user or reset its password (read "
                "from the terminal, or one line of stdin)",
                cmd_admin_set_password).add_argument(
        "--username", help="default: ADMIN_USERNAME, else admin")
    add_command(actions, "unlock", "clear the failed-login lockout (all addresses, or one)",
                cmd_admin_unlock).add_argument(
        "--ip", help="only this address, as the server's log names it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oxsync", description="Self-hosted Cloud Sync server for OxideTerm. Without a "
        "command it serves: 'oxsync --listen 0.0.0.0:8730 --db-path ./sync.db'.",
        epilog="Every command takes --help. Settings come from flags, then environment "
        "variables, then an optional ./.env file.")
    parser.add_argument("--version", action="version", version=f"oxsync {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_command(commands, "serve", "run the sync server (the default command)", cmd_serve,
                SERVER_OPTIONS)
    add_token_commands(commands)
    add_namespace_commands(commands)
    add_device_commands(commands)
    add_maintenance_commands(commands)
    add_admin_commands(commands)
    parser.set_defaults(command_names=set(commands.choices))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = rewrite_legacy_flags(legacy_environment(argv))
    except ConfigError as error:
        print(f"oxsync: {error}", file=sys.stderr)
        return 2
    parser = build_parser()
    known = parser.get_default("command_names")
    if not argv or (argv[0] not in known and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = parser.parse_args(argv)
    if args.command != "serve":
        configure_logging("WARNING")
    try:
        return args.run(args)
    except (ConfigError, StoreError) as error:
        print(f"oxsync: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
