"""Everything one running emulator knows, shared by its handlers through the app."""

from __future__ import annotations

import functools
import random
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from boxd.sim.appkeys import JwtVerifier
from boxd.sim.auth import TokenAuthority
from boxd.sim.config import Knobs
from boxd.sim.model import Account, User
from boxd.sim.ratelimit import RateLimiter
from boxd.sim.views import Views

LOG_SIZE = 20_000


@dataclass
class Stats:
    """Counters behind ``GET /_sim/stats``."""

    requests: defaultdict[str, defaultdict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    rate_limited: int = 0
    unauthorized: int = 0
    bytes_received: int = 0
    #: The latest requests, oldest first: what tests check pacing and pauses against.
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_SIZE))
    token_grants: dict[str, int] = field(
        default_factory=lambda: {"refresh_token": 0, "jwt": 0, "client_credentials": 0}
    )

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": {k: dict(v) for k, v in self.requests.items()},
            "rate_limited": self.rate_limited,
            "unauthorized": self.unauthorized,
            "bytes_received": self.bytes_received,
            "token_grants": dict(self.token_grants),
        }


@dataclass
class SimState:
    """The emulated enterprise: its users, content, tokens, knobs and counters."""

    data_dir: Path
    startup: Knobs
    knobs: Knobs
    account: Account
    authority: TokenAuthority
    jwt: JwtVerifier
    box_config: dict[str, Any]
    user: User  # the OAuth user of credentials.json; an enterprise admin
    service_account: User  # the JWT/CCG enterprise subject
    member: User  # another managed user, a target for As-User
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    limiter: RateLimiter = field(default_factory=RateLimiter)
    stats: Stats = field(default_factory=Stats)

    @functools.cached_property
    def views(self) -> Views:
        return Views(self.account)

    @property
    def blobs(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def session_dir(self) -> Path:
        return self.data_dir / "sessions"

    @classmethod
    def create(
        cls,
        data_dir: Path,
        knobs: Knobs,
        box_config: dict[str, Any],
        verifier: JwtVerifier,
        clock: Callable[[], float] = time.time,
    ) -> SimState:
        settings = box_config["boxAppSettings"]
        account = Account(enterprise_id=str(box_config["enterpriseID"]))
        user = account.add_user(
            User(
                id="11446498",
                name="Backup Admin",
                login="backup@example.com",
                enterprise_id=account.enterprise_id,
                can_impersonate=True,
            )
        )
        service = account.add_user(
            User(
                id="20000001",
                name="boxd sim service account",
                login="AutomationUser_1_sim@boxdevedition.com",
                enterprise_id=account.enterprise_id,
                can_impersonate=True,
                is_service_account=True,
            )
        )
        member = account.add_user(
            User(id="20000002", name="Member User", login="member@example.com", enterprise_id=account.enterprise_id)
        )
        sim: SimState
        authority = TokenAuthority(
            settings["clientID"], settings["clientSecret"], token_ttl=lambda: sim.knobs.token_ttl, clock=clock
        )
        sim = cls(
            data_dir=data_dir,
            startup=knobs,
            knobs=knobs,
            account=account,
            authority=authority,
            jwt=verifier,
            box_config=box_config,
            user=user,
            service_account=service,
            member=member,
            clock=clock,
        )
        return sim

    def request_id(self) -> str:
        return secrets.token_hex(8)


STATE = web.AppKey("boxd_sim_state", SimState)
