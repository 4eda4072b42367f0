"""TriMul: AlphaFold's outgoing triangle multiplicative update (GPU MODE bioml/trimul)."""

from tasks.trimul.harness import Case, CaseResult, run_submission
from tasks.trimul.reference import RANKED, TEST_SHAPES, check, generate_input, reference

__all__ = ["Case", "CaseResult", "run_submission", "RANKED", "TEST_SHAPES", "check", "generate_input", "reference"]
