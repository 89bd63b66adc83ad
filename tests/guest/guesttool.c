/* Static helper for the throwaway test guest (multi-call, chosen by argv[0]).
 *
 *   nfsmount SOURCE TARGET OPTIONS   mount(2) with type "nfs" and a kernel option string
 *                                    (busybox mount does not speak the modern NFS options)
 *   xrename OLD NEW                  rename(2) exactly once; on failure prints the errno name
 *   xcreate PATH                     open(2) with O_CREAT|O_EXCL; on failure prints the errno name
 *
 * Built with gcc -static by tests/support/qemu_guest.py. Exit status 0 on success, 1 on failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

static int fail(const char *tool, const char *what) {
    int e = errno;
    const char *name = strerrorname_np(e);
    printf("%s: %s: %s (%s)\n", tool, what, name ? name : "?", strerror(e));
    return 1;
}

int main(int argc, char **argv) {
    const char *tool = strrchr(argv[0], '/');
    tool = tool ? tool + 1 : argv[0];
    if (strcmp(tool, "nfsmount") == 0) {
        if (argc != 4) {
            fprintf(stderr, "usage: nfsmount SOURCE TARGET OPTIONS\n");
            return 2;
        }
        if (mount(argv[1], argv[2], "nfs", 0, argv[3]) != 0)
            return fail(tool, argv[2]);
        return 0;
    }
    if (strcmp(tool, "xrename") == 0) {
        if (argc != 3) {
            fprintf(stderr, "usage: xrename OLD NEW\n");
            return 2;
        }
        if (rename(argv[1], argv[2]) != 0)
            return fail(tool, argv[1]);
        return 0;
    }
    if (strcmp(tool, "xcreate") == 0) {
        if (argc != 2) {
            fprintf(stderr, "usage: xcreate PATH\n");
            return 2;
        }
        int fd = open(argv[1], O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0)
            return fail(tool, argv[1]);
        close(fd);
        return 0;
    }
    fprintf(stderr, "guesttool: unknown name %s (use nfsmount, xrename or xcreate)\n", tool);
    return 2;
}
