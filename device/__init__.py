"""The learner: the ResNet-26 model, its blocks, the fine-tuning engine and checkpoints.

Must not import HTTP, SQLite or anything from ``service``; ``drift`` and ``energy`` are not needed here.
"""
