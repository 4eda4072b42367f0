"""Upcasters: each turns a stored payload of one schema into the next (``events.UPCASTERS``);
stored bytes are never rewritten. Each works on the payload's JSON object alone."""

from __future__ import annotations

from typing import Any

__all__ = ["upcast_feedback_verdict_v1_v2", "upcast_run_started_v1_v2"]


def upcast_feedback_verdict_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: the training plan's recipe, from the method schema 1 recorded (gold answers
    were sft; rejection sampling was rft)."""
    plan = payload.get("training_plan")
    if isinstance(plan, dict) and not plan.get("recipe"):
        plan = {**plan, "recipe": "sft" if plan.get("method") == "gold" else "rft"}
        return {**payload, "training_plan": plan}
    return payload


def upcast_run_started_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: a run recorded before data and software were pinned pinned neither."""
    return {**payload, "data": None, "environment": None}
