"""The card and detokenize HTTP service."""
