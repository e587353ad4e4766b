"""Tuned examples: ``<algo>/<env>-<algo>.yaml`` with their expected results; ``regression.py`` checks them."""
