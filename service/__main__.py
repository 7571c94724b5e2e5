"""``python -m service``: the ``tbftd`` command line."""

from service.cli import main

raise SystemExit(main())
