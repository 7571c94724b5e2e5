"""Power meters (serial drivers, an estimator, an emulator) and per-job energy accounting.

Must import neither torch nor anything from ``service``: it runs in the daemon's light process.

- ``meter``: the ``Meter`` interface, ``MeterSample`` and ``MeterInfo``.
- ``um``: RDTech UM24C/UM25C/UM34C frame codec and driver; ``line_meter``: text-line bridges;
  ``estimator``: watts from CPU load when there is no meter.
- ``window``: ``EnergyWindow`` and ``EnergyResult``, a job's joules.
- ``discovery``: probing ports and ``select_meter`` for the daemon.
- ``emulator`` and ``profiles``: meters on pseudo-terminals, for tests and demos.
- ``clock``: real and accelerated clocks; ``serial_link``: opening and failing serial ports.
"""
