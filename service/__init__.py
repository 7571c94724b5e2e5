"""The daemon: HTTP API, durable sample store, background jobs and the ``tbftd`` CLI.

Composes ``device``, ``drift`` and ``energy``; nothing else imports from here.
"""
