"""Durable storage of events, deliveries and attempts behind one interface."""

from app.store.base import (
    DeadFilter,
    DeadLetter,
    EventFilter,
    Store,
    StoreError,
    store_from_url,
)

__all__ = ["DeadFilter", "DeadLetter", "EventFilter", "Store", "StoreError", "store_from_url"]
