"""Replay and diff: captured requests of one build sent to another, their answers compared."""
