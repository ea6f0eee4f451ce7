"""A flaky link, reproducibly: frames dropped, duplicated, corrupted or truncated at given rates.

:class:`FaultInjector` decides the fate of each frame with its own random
generator, so a run is reproducible from a seed. ``runtime emulate --faults``
puts one on each direction of every emulated device's link; use one directly
to test a parser or a host against the same kinds of damage.

>>> import random
>>> link = FaultInjector(FaultRates.parse("drop=0.5"), random.Random(7))
>>> delivered = [link.apply(b"frame") for _ in range(1000)]
>>> link.counts.dropped + link.counts.delivered == 1000
True
>>> 400 < link.counts.dropped < 600
True
"""

from __future__ import annotations

import dataclasses
import random

__all__ = ["FAULT_KINDS", "FaultCounts", "FaultInjector", "FaultRates"]

FAULT_KINDS = ("drop", "duplicate", "corrupt", "truncate")
"""What a flaky link does to frames, in the order the decisions are drawn for each frame."""


@dataclasses.dataclass(frozen=True)
class FaultRates:
    """How often a flaky link damages frames: one probability (0..1) per kind, drawn independently per frame.

    * ``drop``: the frame is lost (nothing else happens to it).
    * ``duplicate``: an intact copy of the frame follows it.
    * ``corrupt``: one random bit of the encoded frame flips, never turning a
      byte into 0x00 (so the frame stays one frame). The checksum or the COBS
      structure almost always gives it away; a flipped COBS code byte moves
      zero bytes around, which the 8-bit XOR checksum misses now and then
      (about 1 in 50 corrupted frames of a message full of zeros).
    * ``truncate``: the encoded frame is cut short; its delimiter still follows.

    A frame both corrupted and truncated counts once as *mutated*: each mutated
    frame is exactly one bad frame on the wire.

    >>> FaultRates.parse('drop=0.1,corrupt=0.05')
    FaultRates(drop=0.1, duplicate=0.0, corrupt=0.05, truncate=0.0)
    >>> str(FaultRates.parse('all=0.1'))
    'drop=0.1,duplicate=0.1,corrupt=0.1,truncate=0.1'
    """

    drop: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    truncate: float = 0.0

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            rate = getattr(self, kind)
            if not 0.0 <= rate <= 1.0:  # also refuses NaN
                raise ValueError(f"{kind} rate must be in 0..1, not {rate!r}")

    @classmethod
    def parse(cls, text: str) -> FaultRates:
        """Parse ``KIND=RATE[,KIND=RATE...]`` (``all=RATE`` sets every kind; later items win).

        Raises:
            ValueError: Unknown kind, malformed item, or a rate outside 0..1.
        """
        rates: dict[str, float] = {}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            kind, sep, value = item.partition("=")
            kind = kind.strip()
            if not sep:
                raise ValueError(f"{item!r}: expected KIND=RATE")
            if kind != "all" and kind not in FAULT_KINDS:
                raise ValueError(f"{item!r}: unknown fault {kind!r} (known: {', '.join(FAULT_KINDS)}, all)")
            try:
                rate = float(value)
            except ValueError:
                raise ValueError(f"{item!r}: the rate must be a number in 0..1") from None
            for name in FAULT_KINDS if kind == "all" else (kind,):
                rates[name] = rate
        return cls(**rates)

    @property
    def active(self) -> bool:
        """Whether any rate is above zero."""
        return any(getattr(self, kind) > 0 for kind in FAULT_KINDS)

    def __str__(self) -> str:
        return ",".join(f"{kind}={getattr(self, kind):g}" for kind in FAULT_KINDS)


@dataclasses.dataclass
class FaultCounts:
    """What a :class:`FaultInjector` did, frame by frame."""

    frames: int = 0
    """Frames offered to the link."""
    delivered: int = 0
    """Frames the link passed on (``frames - dropped + duplicated``), damaged or not."""
    dropped: int = 0
    duplicated: int = 0
    corrupted: int = 0
    truncated: int = 0
    mutated: int = 0
    """Frames corrupted, truncated or both: each is one bad frame delivered."""

    def to_json(self) -> dict[str, int]:
        """The counts as a JSON object."""
        return dataclasses.asdict(self)


class FaultInjector:
    """Damage frames the way a flaky link does, at the given rates, reproducibly for a given ``rng``.

    Four random numbers are drawn per frame (when any rate is nonzero), so the
    decisions for the n-th frame depend only on the seed, not on the frames'
    contents or timing.

    >>> injector = FaultInjector(FaultRates(truncate=1.0), random.Random(1))
    >>> [len(frame) < 6 for frame in injector.apply(bytes.fromhex('04 13 02 06 02 17'))]
    [True]
    >>> injector.counts.truncated, injector.counts.mutated
    (1, 1)
    """

    def __init__(self, rates: FaultRates, rng: random.Random) -> None:
        self.rates = rates
        self.rng = rng
        self.counts = FaultCounts()

    def apply(self, frame: bytes) -> list[bytes]:
        """What the link delivers for one COBS frame (without delimiter): none, one or two frames."""
        counts = self.counts
        counts.frames += 1
        if not self.rates.active:
            counts.delivered += 1
            return [frame]
        rng, rates = self.rng, self.rates
        drop, duplicate, corrupt, truncate = (
            rng.random() < rate for rate in (rates.drop, rates.duplicate, rates.corrupt, rates.truncate)
        )
        if drop:
            counts.dropped += 1
            return []
        damaged = frame
        if corrupt and frame:
            damaged = self._flip_a_bit(damaged)
            counts.corrupted += 1
        if truncate and len(frame) > 1:
            damaged = damaged[: rng.randrange(1, len(damaged))]
            counts.truncated += 1
        if damaged is not frame:
            counts.mutated += 1
        delivered = [damaged, frame] if duplicate else [damaged]
        counts.duplicated += duplicate
        counts.delivered += len(delivered)
        return delivered

    def _flip_a_bit(self, frame: bytes) -> bytes:
        data = bytearray(frame)
        while True:  # ends soon: only one of the 8 bits of a nonzero byte can turn it into 0x00
            index, bit = self.rng.randrange(len(data)), self.rng.randrange(8)
            if data[index] ^ (1 << bit):  # a 0x00 would be a delimiter: the frame would split
                data[index] ^= 1 << bit
                return bytes(data)
