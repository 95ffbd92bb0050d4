"""MagiCapture Studio engine: all ML, data and storage (no UI)."""
