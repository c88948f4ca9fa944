"""Durable storage of events, deliveries and attempts behind one interface."""

from app.store.base import EventFilter, Store, StoreError, store_from_url

__all__ = ["EventFilter", "Store", "StoreError", "store_from_url"]
