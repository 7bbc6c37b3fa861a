"""Planted defenses for the verdict tests: models whose robustness is fake in a way none of them declares
(tests/test_verdicts.py). Importing this package registers them."""
