"""Feedback Agents: the rule policy and the model that chooses among valid options."""
