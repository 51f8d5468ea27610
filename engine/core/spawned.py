"""`python -m engine.core.spawned MODULE ARGS...`: run `python -m MODULE ARGS...` once the process that started it
(engine.api.processes.spawn) says go, by a byte on stdin or by closing it.

spawn writes the folder's status.json ("starting", with the child's pid) after Popen returns, as only then is the pid
known. A child that wrote its own first status before that (an export's "running") had it overwritten on a loaded
machine, and read "starting" until its next write. Held here, before the module is even imported, the child writes
nothing until the parent's status is in place. Should the parent die first, stdin closes and the child goes on.
"""

import os
import runpy
import sys

if __name__ == "__main__":
    os.read(0, 1)  # the parent's go: a byte, or end of file
    module = sys.argv[1]
    sys.argv = sys.argv[1:]  # run_module sets argv[0] to the module's file, as -m does
    runpy.run_module(module, run_name="__main__", alter_sys=True)
