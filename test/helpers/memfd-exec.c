/* Runs /bin/busybox from a memfd (fexecve): the fileless-drift case of test/e2e/drift.test.ts. Usage: memfd-exec ARGV0 [ARGS...] */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>
int main(int argc, char **argv) {
  int fd = memfd_create("amber-x", 0);
  int src = open("/bin/busybox", O_RDONLY);
  char buf[65536]; ssize_t n;
  while ((n = read(src, buf, sizeof buf)) > 0) if (write(fd, buf, n) != n) return 2;
  char *env[] = { NULL };
  fexecve(fd, argv + 1, env);
  perror("fexecve");
  return 1;
}
