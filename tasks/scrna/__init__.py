"""scrna-denoise: OpenProblems v1 scRNA-seq denoising (molecular cross-validation)."""

from tasks.scrna.task import ScrnaDenoise

__all__ = ["ScrnaDenoise"]
