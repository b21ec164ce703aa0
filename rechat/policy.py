"""Record modes: what rechat does with a request, decided before anything is done.

Owns the record-mode table (docs/usage.md, "Record modes"). Pure; imports only `errors`.

    | mode        | hit     | miss    | records?          |
    |-------------|---------|---------|-------------------|
    | serve       | replay  | forward | yes               |
    | record      | forward | forward | yes               |
    | replay      | replay  | 404     | no                |
    | passthrough | forward | forward | no, but logged    |
"""

from __future__ import annotations

from enum import Enum

from rechat.errors import ConfigError


class Mode(str, Enum):
    """A record mode (the table in this module's docstring)."""

    SERVE = "serve"
    RECORD = "record"
    REPLAY = "replay"
    PASSTHROUGH = "passthrough"

    @classmethod
    def parse(cls, name: str) -> "Mode":
        """Return the mode called `name`; raise ConfigError listing the valid names otherwise."""
        try:
            return cls(name.lower())
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ConfigError(f"unknown record mode {name!r}; valid modes: {valid}") from None


class Action(str, Enum):
    """What to do with one request."""

    REPLAY = "replay"
    FORWARD = "forward"
    MISS = "miss"


# mode -> (action on a hit, action on a miss, records forwarded exchanges)
TABLE: dict[Mode, tuple[Action, Action, bool]] = {
    Mode.SERVE: (Action.REPLAY, Action.FORWARD, True),
    Mode.RECORD: (Action.FORWARD, Action.FORWARD, True),
    Mode.REPLAY: (Action.REPLAY, Action.MISS, False),
    Mode.PASSTHROUGH: (Action.FORWARD, Action.FORWARD, False),
}


def looks_up(mode: Mode, respond: bool = True) -> bool:
    """True when `mode` consults the sessions at all (a hit changes what happens)."""
    hit, miss, _ = TABLE[mode]
    return hit != miss and respond


def decide(mode: Mode, hit: bool, respond: bool = True) -> Action:
    """Return the action for a request under `mode`, given whether the sessions hold an answer.

    `respond=False` is the caching proxy's RESPOND_WITH_CACHE=false switch: a hit is treated
    as a miss (seed: openai-caching-proxy-README.md).
    """
    return TABLE[mode][0 if hit and respond else 1]


def records(mode: Mode, store: bool = True) -> bool:
    """True when exchanges forwarded under `mode` are written to the sessions.

    `store=False` is the caching proxy's STORE_CACHE=false switch.
    """
    return TABLE[mode][2] and store
