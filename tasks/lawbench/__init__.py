"""LawBench (open-compass/LawBench): loaders, the 20 task scorers (2-1 simplified, and it says
so), and the single-label charge classification task used for improvement runs."""

from tasks.lawbench.data import (
    LawBenchDataError,
    load_items,
    load_predictions,
    prediction_sets,
)
from tasks.lawbench.scorers import SCORERS, SIMPLIFIED, score_file

__all__ = ["LawBenchDataError", "load_items", "load_predictions", "prediction_sets", "SCORERS", "SIMPLIFIED", "score_file"]
