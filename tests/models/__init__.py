"""Model tests: one generic file over the registry, one per encoder family or paper."""
