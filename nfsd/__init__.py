"""Realize: a household file system served over NFSv3."""
