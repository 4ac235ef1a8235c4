"""tokenpool: prefetched TOME token pairs served from PostgreSQL."""

__version__ = "0.1.0"
