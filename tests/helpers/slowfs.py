#!/usr/bin/env python3
"""A FUSE passthrough of SOURCE at MOUNT on which the first read of a file named `slow*`
(the read at offset 0) takes DELAY seconds: a cold, slow disk seeking to a file, for
lameduck's tests. A file named `reopen*` is quick to open once; its second open takes
DELAY seconds (an `open` is a request to this daemon, as to a network file system's
server). Usage: slowfs.py SOURCE MOUNT DELAY. Runs in the foreground until unmounted or
killed.

A file named `lag*` (a disk image, say, for a loop device) reads at full speed until a file
named `armed` appears in SOURCE; from then on, every read of it that reaches this daemon
waits until DELAY seconds after `armed` was written: a local file system on a slow device,
whose pages already in the page cache answer at once and whose others wait."""
import os
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations

class SlowFS(Operations):
    def __init__(self, root, delay):
        self.root, self.delay = root, delay
        self.opens, self.opens_lock = {}, threading.Lock()
    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))
    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._p(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid", "st_ino")}
    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._p(path))
    def open(self, path, flags):
        if os.path.basename(path).startswith("reopen"):
            with self.opens_lock:
                self.opens[path] = self.opens.get(path, 0) + 1
                nth = self.opens[path]
            if nth == 2:
                time.sleep(self.delay)
        return os.open(self._p(path), flags)
    def read(self, path, size, offset, fh):
        name = os.path.basename(path)
        if offset == 0 and name.startswith("slow"):
            time.sleep(self.delay)
        if name.startswith("lag"):
            try:
                wait = os.stat(self._p("armed")).st_mtime + self.delay - time.time()
            except FileNotFoundError:
                wait = 0
            if wait > 0:
                time.sleep(wait)
        # Positional: the kernel sends reads of one open file from several threads at once.
        return os.pread(fh, size, offset)
    def release(self, path, fh):
        os.close(fh)
    def readlink(self, path):
        return os.readlink(self._p(path))

if __name__ == "__main__":
    src, mnt, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    FUSE(SlowFS(src, delay), mnt, foreground=True, nothreads=False, ro=True)
