"""Logging, masking and metrics shared by every part of tokenpool."""
