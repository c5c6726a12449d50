"""Block caches and their policies (see the cache-engine issue)."""
