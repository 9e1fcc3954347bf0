"""Readers for the dataset layout of DESIGN.md, and the synthetic ADNI-like generator.

Nothing here imports torch: readers return numpy arrays and pandas tables.
"""
