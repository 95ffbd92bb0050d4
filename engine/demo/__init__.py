"""Tiny-model kit: random-weight models in the real formats, for tests and --demo."""
