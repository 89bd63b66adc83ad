"""Persistent state in RocksDB."""
