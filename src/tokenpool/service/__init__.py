"""The card and detokenize HTTP service (issue 5)."""
