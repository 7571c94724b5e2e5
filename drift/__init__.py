"""Drift types, the drift-type → block mapping, shift generators and the datasets they act on.

May import ``device`` (for block names); must not import ``service``.
"""
