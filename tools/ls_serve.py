"""Label Studio for the local stack: `label-studio start`, served by gunicorn worker processes.

Run with the Label Studio venv's python and the same arguments as `label-studio` (``start --port ... --data-dir
...``). Everything `label-studio start` does first is kept (migrations, the user and token from the
``LABEL_STUDIO_*`` variables on an empty data dir, its settings); only the last step differs: instead of Django's
``runserver`` (one process, so one core however many requests run: a nightly pull's export snapshots and the
annotators' saves all queue on one GIL) the app is served by gunicorn with ``LABELOPS_LS_WORKERS`` sync worker
processes (default 4), as Label Studio's own Docker image serves it with several uwsgi processes. gunicorn refuses a busy port instead of moving to another one silently.

SQLite (the local stack's database) is switched to write-ahead logging: with the default rollback journal a
long read (an export snapshot holds one read transaction while it serialises ~10,000 tasks, ~10 s) blocks every
write for its whole length, so an annotation saved meanwhile waits and fails with "database is locked" after
SQLite's 5 s busy timeout. In WAL mode readers and the writer do not block each other. Label Studio has the same
switch behind ``AZURE_MOUNT_FIX``; this sets it directly.
"""

from __future__ import annotations

import os
import sys


def _wal(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=wal;")


def workers() -> int:
    """gunicorn worker processes: LABELOPS_LS_WORKERS, default 4."""
    return int(os.environ.get("LABELOPS_LS_WORKERS", "4"))


def _serve(host: str, port: int) -> None:
    from django.core.wsgi import get_wsgi_application
    from django.db import connections
    from gunicorn.app.base import BaseApplication

    connections.close_all()  # no SQLite handle may cross the fork into the workers

    class LabelStudioApp(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": f"{host}:{port}",
                # sync workers take one request at a time, so a busy worker accepts no new connection and two
                # long exports land on two processes (gthread workers keep accepting while busy: both could land
                # on one process and share its GIL)
                "workers": workers(),
                "worker_class": "sync",
                # exports and bulk imports of 100,000 tasks are single long requests: no worker timeout kill
                "timeout": 3600,
                "graceful_timeout": 5,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            return get_wsgi_application()

    LabelStudioApp().run()


def main() -> None:
    from django.db.backends.signals import connection_created

    import label_studio.server as server

    connection_created.connect(_wal)
    server._app_run = _serve  # the last step of `label-studio start`
    sys.argv = ["label-studio", *sys.argv[1:]]
    server.main()


if __name__ == "__main__":
    main()
