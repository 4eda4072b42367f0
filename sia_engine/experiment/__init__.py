"""Experiments: scaffold-only vs weights-only vs both as forks of one history, and baselines."""
