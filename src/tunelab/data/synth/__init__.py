"""Synthetic data from a teacher model (any OpenAI-compatible endpoint): more rows like a few seed rows, or
question/answer pairs grounded in documents; every request cached so that a re-run costs nothing."""
