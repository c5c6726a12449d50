"""Ray gangs and sequence parallelism (see the sequence-parallel issue)."""
