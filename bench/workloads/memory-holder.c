/*
 * A process whose memory the memory-dump tests know: PREFIX-SUFFIX joined on
 * the heap only (argv holds the halves), MiB of non-zero filler in one mapping
 * of its own, and THREADS extra threads asleep. Prints "ready <filler address>"
 * once all is in place. Usage: memory-holder PREFIX SUFFIX MIB THREADS
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* where the marker lives: volatile, so the compiler keeps the heap copy */
char *volatile kept_marker;

static void *sleeper(void *arg) {
  (void)arg;
  for (;;) pause();
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 5) return 2;
  size_t len = strlen(argv[1]) + strlen(argv[2]) + 2;
  char *marker = malloc(len);
  snprintf(marker, len, "%s-%s", argv[1], argv[2]);
  kept_marker = marker;
  size_t bytes = (size_t)atoi(argv[3]) << 20;
  unsigned char *filler = NULL;
  if (bytes > 0) {
    filler = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (filler == MAP_FAILED) return 3;
    for (size_t i = 0; i < bytes; i++) filler[i] = (unsigned char)(i * 7 + 1);
  }
  int threads = atoi(argv[4]);
  for (int i = 0; i < threads; i++) {
    pthread_t t;
    if (pthread_create(&t, NULL, sleeper, NULL) != 0) return 4;
  }
  printf("ready %p\n", (void *)filler);
  fflush(stdout);
  for (;;) pause();
}
