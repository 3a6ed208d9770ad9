"""Chaos testing for the Flower engines: make chosen ClientApps crash or hang in chosen rounds.

Spec (run-config key `faults`): comma-separated `crash:CLIENT@ROUND` or `hang:CLIENT@ROUND:SECONDS`,
e.g. "crash:1@1,hang:2@2:20". The server forwards it in the setup record, so simulation and
deployment inject the same faults."""

from __future__ import annotations

import time
from dataclasses import dataclass

from zorba.errors import UserError


class InjectedCrash(RuntimeError):
    """Raised by a ClientApp told to crash (chaos testing)."""


@dataclass(frozen=True)
class Fault:
    kind: str  # "crash" or "hang"
    client: int
    round: int
    seconds: float = 0.0


def parse_faults(spec: str) -> tuple[Fault, ...]:
    faults = []
    for item in (s.strip() for s in spec.split(",")):
        if item:
            faults.append(_parse_one(item))
    return tuple(faults)


def _parse_one(item: str) -> Fault:
    try:
        kind, rest = item.split(":", 1)
        client, when = rest.split("@", 1)
        rnd, _, seconds = when.partition(":")
        fault = Fault(kind, int(client), int(rnd), float(seconds or 0))
    except ValueError:
        raise UserError(f"fault {item!r}: expected crash:CLIENT@ROUND or hang:CLIENT@ROUND:SECONDS") from None
    if fault.kind not in ("crash", "hang") or (fault.kind == "hang" and fault.seconds <= 0):
        raise UserError(f"fault {item!r}: kind must be crash, or hang with positive seconds")
    return fault


def inject(faults: tuple[Fault, ...], client: int, round_idx: int) -> None:
    for f in faults:
        if f.client == client and f.round == round_idx:
            if f.kind == "crash":
                raise InjectedCrash(f"injected crash: client {client}, round {round_idx}")
            time.sleep(f.seconds)
