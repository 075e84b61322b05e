/* A storage fault shim for the reliability suite (issue 5, items 7 and 8), loaded into a
 * `cardmint serve` subprocess with LD_PRELOAD. It touches only files whose path contains
 * $FAULTFS_MATCH (the database: main file and WAL; never the -shm index, which SQLite
 * rebuilds after a crash).
 *
 * Power loss ($FAULTFS_UNDO = a log path): before every write or truncate of such a file the
 * bytes it overwrites (and the file's size) are appended to the undo log, and every fsync /
 * fdatasync of the file appends a sync mark. After `kill -9`, undoing every record written
 * after a file's last sync mark leaves exactly what a power cut could have left: nothing that
 * was not synced (tests/reliability/faultfs.py applies it).
 *
 * I/O faults ($FAULTFS_CTL = a control file): while the file holds "eio" or "enospc", every
 * write, truncate, fsync and fdatasync of such a file fails with that errno.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int undo_fd = -2;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);

static void init(void) {
    if (!real_write) {
        real_write = dlsym(RTLD_NEXT, "write");
        real_pwrite = dlsym(RTLD_NEXT, "pwrite");
        real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
        real_fsync = dlsym(RTLD_NEXT, "fsync");
        real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
        real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
        real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    }
}

/* 1 and the file's path in buf when fd is one of the database's files. */
static int ours(int fd, char *buf, size_t n) {
    const char *match = getenv("FAULTFS_MATCH");
    if (!match || fd < 0) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t k = readlink(link, buf, n - 1);
    if (k <= 0) return 0;
    buf[k] = 0;
    return strstr(buf, match) != NULL && strstr(buf, "-shm") == NULL;
}

/* The errno to fail with now, or 0. */
static int fault(void) {
    const char *ctl = getenv("FAULTFS_CTL");
    if (!ctl) return 0;
    int f = open(ctl, O_RDONLY | O_CLOEXEC);
    if (f < 0) return 0;
    char b[16] = {0};
    ssize_t k = read(f, b, sizeof b - 1);
    close(f);
    if (k >= 6 && !strncmp(b, "enospc", 6)) return ENOSPC;
    if (k >= 3 && !strncmp(b, "eio", 3)) return EIO;
    return 0;
}

static void put(const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t k = real_write(undo_fd, c, n);
        if (k <= 0) abort(); /* a lost undo record would make the power cut a lie */
        c += k;
        n -= (size_t)k;
    }
}

/* Record kind ('W' before a write or truncate, 'S' after a sync) for path; for 'W' the
 * bytes [off, off + len) as they are now and the file's size now. */
static void record(char kind, int fd, const char *path, int64_t off, int64_t len) {
    const char *undo = getenv("FAULTFS_UNDO");
    if (!undo) return;
    pthread_mutex_lock(&mu);
    if (undo_fd == -2) undo_fd = open(undo, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (undo_fd < 0) abort();
    uint32_t plen = (uint32_t)strlen(path);
    int64_t size = 0, have = 0;
    char *old = NULL;
    if (kind == 'W') {
        struct stat st;
        if (fstat(fd, &st) != 0) abort();
        size = st.st_size;
        have = off < size ? (off + len < size ? len : size - off) : 0;
        if (have > 0) {
            old = malloc((size_t)have);
            if (!old || pread(fd, old, (size_t)have, off) != have) abort();
        }
    }
    put(&kind, 1);
    put(&plen, sizeof plen);
    put(path, plen);
    put(&off, sizeof off);
    put(&size, sizeof size);
    put(&have, sizeof have);
    if (have > 0) put(old, (size_t)have);
    free(old);
    pthread_mutex_unlock(&mu);
}

static int before_write(int fd, int64_t off, int64_t len) {
    char path[4096];
    if (!ours(fd, path, sizeof path)) return 0;
    int e = fault();
    if (e) {
        errno = e;
        return -1;
    }
    record('W', fd, path, off, len);
    return 0;
}

ssize_t write(int fd, const void *buf, size_t n) {
    init();
    if (fd > 2 && before_write(fd, lseek(fd, 0, SEEK_CUR), (int64_t)n) != 0) return -1;
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    init();
    if (before_write(fd, off, (int64_t)n) != 0) return -1;
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    init();
    if (before_write(fd, off, (int64_t)n) != 0) return -1;
    return real_pwrite64(fd, buf, n, off);
}

static int truncating(int fd, int64_t len) {
    char path[4096];
    if (!ours(fd, path, sizeof path)) return 0;
    int e = fault();
    if (e) {
        errno = e;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size > len) record('W', fd, path, len, st.st_size - len);
    else record('W', fd, path, len, 0);
    return 0;
}

int ftruncate(int fd, off_t len) {
    init();
    if (truncating(fd, len) != 0) return -1;
    return real_ftruncate(fd, len);
}

int ftruncate64(int fd, off64_t len) {
    init();
    if (truncating(fd, len) != 0) return -1;
    return real_ftruncate64(fd, len);
}

static int synced(int fd, int rc) {
    char path[4096];
    if (rc == 0 && ours(fd, path, sizeof path)) record('S', fd, path, 0, 0);
    return rc;
}

static int sync_fault(int fd) {
    char path[4096];
    if (!ours(fd, path, sizeof path)) return 0;
    int e = fault();
    if (e) errno = e;
    return e;
}

int fsync(int fd) {
    init();
    if (sync_fault(fd)) return -1;
    return synced(fd, real_fsync(fd));
}

int fdatasync(int fd) {
    init();
    if (sync_fault(fd)) return -1;
    return synced(fd, real_fdatasync(fd));
}
