"""Children of the harness end when it does, however it ends.

``PR_SET_PDEATHSIG`` would tie a child to the *thread* that forked it, and
Trio starts processes from worker threads that come and go; so each child
watches instead whether its parent process is still the one that started it.
"""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent() -> None:
    """Exit this process (status 1) soon after its parent process is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
