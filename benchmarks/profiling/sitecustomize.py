"""Profiles a service process with yappi (CPU clock, every thread) when LONGTAIL_PROFILE_DIR is set.

``python -m benchmarks.recommend --profile DIR`` puts this folder first on the services'
PYTHONPATH. Each process profiles from its start; SIGUSR1 clears what was gathered so far (the
benchmark sends it once the catalogue is loaded, so the dump holds the measured load only); at exit
(SIGTERM drains and returns normally, so atexit runs) it writes ``DIR/<service>-<pid>.prof`` in
pstats format. Worker threads count: the store's transactions and ranking's scoring run in
``asyncio.to_thread``. Read the dumps with ``python -m benchmarks.profiling.top DIR``.
"""

import atexit
import os
import signal
import sys

_directory = os.environ.get("LONGTAIL_PROFILE_DIR")
if _directory and sys.argv[:1] == ["-m"]:
    import yappi

    _folder: str = _directory

    def _clear(_signum: int, _frame: object) -> None:
        yappi.clear_stats()

    def _dump() -> None:
        yappi.stop()
        # python -m services.<name>: argv[0] is now .../services/<name>/__main__.py.
        name = os.path.basename(os.path.dirname(sys.argv[0])) or "python"
        yappi.get_func_stats().save(os.path.join(_folder, f"{name}-{os.getpid()}.prof"), "pstat")

    yappi.set_clock_type("cpu")
    signal.signal(signal.SIGUSR1, _clear)
    atexit.register(_dump)
    yappi.start(builtins=True)
