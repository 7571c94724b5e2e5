"""Power meters (serial drivers, an estimator, an emulator) and per-job energy accounting.

Must import neither torch nor anything from ``service``: it runs in the daemon's light process.
"""
