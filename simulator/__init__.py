"""Simulated sensors: one by id (`python -m simulator sensor1`) or a fleet of thousands."""
