"""Test only: stops a process at one exact moment, so that a test can kill -9 it there (the kill battery in
tests/test_scheduler.py). Python imports `sitecustomize` at start-up from PYTHONPATH, so the scheduler's worker
processes (spawned, with the parent's environment) stop there too. Inactive without BENCH_TEST_PAUSE:

    BENCH_TEST_PAUSE="write REGEX N"      before the Nth os.replace onto a path matching REGEX: the temporary file
                                          is complete, the rename not done (bench.store's atomic writes)
    BENCH_TEST_PAUSE="call MODULE.FUNC N"  at the Nth call of MODULE.FUNC (looked up as a module global)

At that moment the process prints "PAUSED ..." on stderr and sleeps."""
import os

_SPEC = os.environ.get("BENCH_TEST_PAUSE")

if _SPEC:
    import importlib
    import re
    import sys
    import time

    _kind, _target, _nth = _SPEC.split()
    _seen = 0

    def _pause_on_nth(hit: bool) -> None:
        global _seen
        _seen += hit
        if hit and _seen == int(_nth):
            sys.stderr.write(f"PAUSED {_SPEC} (pid {os.getpid()})\n")
            sys.stderr.flush()
            time.sleep(3600)

    if _kind == "write":
        _replace = os.replace

        def _paused_replace(src, dst, *args, **kwargs):
            _pause_on_nth(re.search(_target, os.fspath(dst)) is not None)
            return _replace(src, dst, *args, **kwargs)

        os.replace = _paused_replace
    else:
        _module, _name = _target.rsplit(".", 1)
        _mod = importlib.import_module(_module)
        _original = getattr(_mod, _name)

        def _paused_call(*args, **kwargs):
            _pause_on_nth(True)
            return _original(*args, **kwargs)

        setattr(_mod, _name, _paused_call)
