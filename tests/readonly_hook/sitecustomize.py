"""Test only: makes one folder read-only for this process and the processes it spawns, as `chmod a-w` does for a
user who is not root (tests run as root in some containers, where chmod stops nothing). Python imports
`sitecustomize` at start-up from PYTHONPATH. Inactive without BENCH_TEST_READONLY:

    BENCH_TEST_READONLY=FOLDER    creating, writing, renaming or deleting anything under FOLDER raises
                                  PermissionError (errno 13), reading works"""
import os

_FOLDER = os.environ.get("BENCH_TEST_READONLY")

if _FOLDER:
    import builtins
    import errno
    import io

    _root = os.path.realpath(_FOLDER)

    def _inside(path) -> bool:
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:  # a file descriptor
            return False
        return p == _root or p.startswith(_root + os.sep)

    def _deny(path):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    _os_open, _open, _mkdir, _replace, _rename, _unlink = os.open, builtins.open, os.mkdir, os.replace, os.rename, os.unlink
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _guarded_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE and _inside(path):
            _deny(path)
        return _os_open(path, flags, *args, **kwargs)

    def _guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _inside(file):
            _deny(file)
        return _open(file, mode, *args, **kwargs)

    def _guarded_mkdir(path, *args, **kwargs):
        if _inside(path) and not os.path.isdir(path):
            _deny(path)
        return _mkdir(path, *args, **kwargs)

    def _guarded_move(real):
        def move(src, dst, *args, **kwargs):
            if _inside(src) or _inside(dst):
                _deny(dst)
            return real(src, dst, *args, **kwargs)
        return move

    def _guarded_unlink(path, *args, **kwargs):
        if _inside(path):
            _deny(path)
        return _unlink(path, *args, **kwargs)

    os.open, builtins.open, io.open, os.mkdir = _guarded_os_open, _guarded_open, _guarded_open, _guarded_mkdir
    os.replace, os.rename, os.unlink = _guarded_move(_replace), _guarded_move(_rename), _guarded_unlink
