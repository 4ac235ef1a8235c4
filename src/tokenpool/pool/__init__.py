"""The token pool domain: pairs, reservations, the status machine and its errors. No I/O here."""

from tokenpool.pool.errors import (
    LeaseExpired,
    PairConflict,
    PoolError,
    PoolExhausted,
    PoolUnavailable,
    ReservationConflict,
    TooManyOpenReservations,
    UnknownReservation,
)
from tokenpool.pool.model import PairStatus, PoolStats, Reservation, TokenPair

__all__ = [
    "LeaseExpired",
    "PairConflict",
    "PairStatus",
    "PoolError",
    "PoolExhausted",
    "PoolStats",
    "PoolUnavailable",
    "Reservation",
    "ReservationConflict",
    "TokenPair",
    "TooManyOpenReservations",
    "UnknownReservation",
]
