"""A disk that can lose power: a FUSE file system for the power-cut tests (after LazyFS).

    python3 tests/_powercut_fs.py BACKING MOUNTPOINT CONTROL_SOCKET

What a program writes lives only in this process's memory until the program makes it
durable the way POSIX asks: fsync/fdatasync of a file writes its data to the backing
folder; a name (create, rename, unlink, mkdir, rmdir) becomes durable only when its
folder is fsynced. A "power cut" (the line `cut` sent to CONTROL_SOCKET) throws away
everything not yet durable: the mount then shows exactly what a disk would hold after
the power came back. The line `stats` answers what the last cut dropped.

File data is kept per inode in BACKING/inodes/N; the durable folder tree is kept here
(this process outlives every cut). One lock serializes all operations: this is a test
tool, written to be obviously right rather than fast. Every file but SQLite's `-shm`
is opened with direct_io, so the kernel's page cache never answers a read with bytes
this file system has dropped; the `-shm` file is mmapped (direct_io would forbid that),
and it need not survive a cut (SQLite rebuilds it).
"""

import errno
import os
import socket
import stat
import sys
import threading
import time

import mfusepy

PAGE = 4096
NEVER = float("inf")


class Inode:
    def __init__(self, number: int, mode: int):
        self.number, self.mode = number, mode
        self.size = self.durable_size = 0
        self.dirty: dict[int, bytearray] = {}  # page index -> the page as written
        self.stale_from = NEVER  # the backing file's bytes from here on are cut off
        self.mtime = time.time()
        self.fd = None  # the backing file, opened on first use

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def parent_of(path: str) -> str:
    return os.path.dirname(path) or "/"


class PowerCutFS(mfusepy.Operations):
    use_ns = True

    def __init__(self, backing: str):
        self.backing = os.path.join(backing, "inodes")
        os.makedirs(self.backing, exist_ok=True)
        self.mutex = threading.Lock()
        self.inodes = {1: Inode(1, stat.S_IFDIR | 0o755)}
        self.names = {"/": 1}  # path -> inode number, as programs see it now
        self.durable = {"/": 1}  # path -> inode number, as a disk holds it
        self.next_number = 2
        self.last_cut = "no cut yet"

    # -- helpers -------------------------------------------------------------------

    def _inode(self, path, fh=None) -> Inode:
        number = fh.fh if fh is not None else self.names.get(path)
        if number is None or number not in self.inodes:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return self.inodes[number]

    def _new(self, path: str, mode: int) -> Inode:
        if path in self.names:
            raise mfusepy.FuseOSError(errno.EEXIST)
        if parent_of(path) not in self.names:
            raise mfusepy.FuseOSError(errno.ENOENT)
        inode = Inode(self.next_number, mode)
        self.inodes[inode.number] = inode
        self.names[path] = inode.number
        self.next_number += 1
        return inode

    def _backing_fd(self, inode: Inode) -> int:
        if inode.fd is None:
            inode.fd = os.open(os.path.join(self.backing, str(inode.number)),
                               os.O_RDWR | os.O_CREAT, 0o600)
        return inode.fd

    def _page(self, inode: Inode, index: int) -> bytearray:
        """The page as a program sees it now (not a copy when it is dirty)."""
        if index in inode.dirty:
            return inode.dirty[index]
        start = index * PAGE
        page = bytearray(os.pread(self._backing_fd(inode), PAGE, start)) \
            if start < min(inode.durable_size, inode.stale_from) else bytearray()
        page.extend(bytes(PAGE - len(page)))
        cut = min(inode.durable_size, inode.stale_from) - start
        if 0 <= cut < PAGE:
            page[cut:] = bytes(PAGE - cut)
        return page

    def _open(self, path: str, fi, inode: Inode) -> int:
        fi.fh = inode.number
        fi.direct_io = 0 if path.endswith("-shm") else 1
        fi.keep_cache = 0
        return 0

    # -- files ---------------------------------------------------------------------

    def getattr(self, path, fh=None):
        with self.mutex:
            inode = self._inode(path, fh)
            return {"st_mode": inode.mode, "st_size": inode.size, "st_nlink": 1,
                    "st_mtime": int(inode.mtime * 1e9), "st_ctime": int(inode.mtime * 1e9),
                    "st_atime": int(inode.mtime * 1e9), "st_uid": os.getuid(),
                    "st_gid": os.getgid(), "st_blocks": (inode.size + 511) // 512}

    def create(self, path, mode, fi=None):
        with self.mutex:
            return self._open(path, fi, self._new(path, stat.S_IFREG | (mode & 0o7777)))

    def open(self, path, fi):
        with self.mutex:
            return self._open(path, fi, self._inode(path))

    def read(self, path, size, offset, fh):
        with self.mutex:
            inode = self._inode(path, fh)
            end, out = min(offset + size, inode.size), bytearray()
            while offset + len(out) < end:
                index, start = divmod(offset + len(out), PAGE)
                out += self._page(inode, index)[start:start + end - offset - len(out)]
            return bytes(out)

    def write(self, path, data, offset, fh):
        with self.mutex:
            inode = self._inode(path, fh)
            done = 0
            while done < len(data):
                index, start = divmod(offset + done, PAGE)
                page = inode.dirty.setdefault(index, self._page(inode, index))
                piece = data[done:done + PAGE - start]
                page[start:start + len(piece)] = piece
                done += len(piece)
            inode.size = max(inode.size, offset + len(data))
            inode.mtime = time.time()
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            inode = self._inode(path, fh)
            if length < inode.size:
                index, start = divmod(length, PAGE)
                if start:
                    page = inode.dirty.setdefault(index, self._page(inode, index))
                    page[start:] = bytes(PAGE - start)
                for gone in [i for i in inode.dirty if i * PAGE >= length]:
                    del inode.dirty[gone]
                inode.stale_from = min(inode.stale_from, length)
            inode.size = length
            inode.mtime = time.time()
            return 0

    def fsync(self, path, datasync, fh):
        with self.mutex:
            inode = self._inode(path, fh)
            if inode.is_dir:
                return self._sync_folder(path)
            fd = self._backing_fd(inode)
            if inode.stale_from != NEVER:
                os.ftruncate(fd, min(inode.stale_from, inode.durable_size))
            for index, page in inode.dirty.items():
                os.pwrite(fd, bytes(page), index * PAGE)
            os.ftruncate(fd, inode.size)
            inode.durable_size, inode.dirty, inode.stale_from = inode.size, {}, NEVER
            return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return 0

    def chmod(self, path, mode):
        with self.mutex:
            inode = self._inode(path)
            inode.mode = stat.S_IFMT(inode.mode) | (mode & 0o7777)
            return 0

    def chown(self, path, uid, gid):
        return 0

    def utimens(self, path, times=None):
        with self.mutex:
            self._inode(path).mtime = times[1] / 1e9 if times else time.time()
            return 0

    def access(self, path, amode):
        with self.mutex:
            self._inode(path)
            return 0

    def statfs(self, path):
        fs = os.statvfs(self.backing)
        return {key: getattr(fs, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                                  "f_bavail", "f_files", "f_ffree", "f_namemax")}

    # -- folders: names change now and become durable when the folder is fsynced -------

    def mkdir(self, path, mode):
        with self.mutex:
            self._new(path, stat.S_IFDIR | (mode & 0o7777))
            return 0

    def _children(self, path: str) -> list[str]:
        return [name for name in self.names if name != "/" and parent_of(name) == path]

    def readdir(self, path, fh):
        with self.mutex:
            return [".", ".."] + [os.path.basename(name) for name in self._children(path)]

    def unlink(self, path):
        with self.mutex:
            self._inode(path)
            del self.names[path]
            return 0

    def rmdir(self, path):
        with self.mutex:
            self._inode(path)
            if self._children(path):
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            del self.names[path]
            return 0

    def rename(self, old, new):
        with self.mutex:
            self._inode(old)
            target = self.names.get(new)
            if target is not None and self.inodes[target].is_dir and self._children(new):
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            for name in [old] + [n for n in self.names if n.startswith(old + "/")]:
                self.names[new + name[len(old):]] = self.names.pop(name)
            return 0

    def fsyncdir(self, path, datasync, fh):
        with self.mutex:
            return self._sync_folder(path)

    def _sync_folder(self, path: str) -> int:
        for name in [n for n in self.durable if n != "/" and parent_of(n) == path]:
            del self.durable[name]
        for name in self._children(path):
            self.durable[name] = self.names[name]
        return 0

    # -- the power cut ---------------------------------------------------------------

    def cut(self) -> str:
        with self.mutex:
            names = {"/": 1}
            for name in sorted(self.durable, key=lambda n: n.count("/")):
                if parent_of(name) in names and name != "/":
                    names[name] = self.durable[name]
            self.durable, self.names = dict(names), names
            dropped_pages = dropped_inodes = 0
            for number, inode in list(self.inodes.items()):
                dropped_pages += len(inode.dirty)
                inode.dirty, inode.size, inode.stale_from = {}, inode.durable_size, NEVER
                if number not in names.values():
                    dropped_inodes += 1
                    if inode.fd is not None:
                        os.close(inode.fd)
                    del self.inodes[number]
                    try:
                        os.remove(os.path.join(self.backing, str(number)))
                    except FileNotFoundError:
                        pass
            self.last_cut = f"dropped {dropped_pages} pages and {dropped_inodes} files"
            return self.last_cut


def serve_control(fs: PowerCutFS, path: str) -> None:
    """One line in, one line out: `cut` or `stats`."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    while True:
        connection, _ = server.accept()
        with connection:
            command = connection.makefile().readline().strip()
            answer = fs.cut() if command == "cut" else fs.last_cut
            connection.sendall(answer.encode() + b"\n")


def main() -> None:
    backing, mountpoint, control = sys.argv[1:4]
    fs = PowerCutFS(os.path.abspath(backing))
    threading.Thread(target=serve_control, args=(fs, control), daemon=True).start()
    mfusepy.FUSE(fs, mountpoint, foreground=True, raw_fi=True, attr_timeout=0,
                 entry_timeout=0, negative_timeout=0, hard_remove=True)


if __name__ == "__main__":
    main()
