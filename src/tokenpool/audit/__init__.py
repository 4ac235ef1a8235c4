"""The audit of token reads: the hash chain over ``detokenize_audit`` and its verification. No I/O here."""
