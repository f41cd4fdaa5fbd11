/* Processor and heap facts: cores for the thread pool, worker names, usable sizes for heap accounting. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#include "edkm_support.h"

int edkm_available_cores(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

#include <malloc.h>

size_t edkm_heap_usable_size(void *ptr) { return ptr ? malloc_usable_size(ptr) : 0; }

void edkm_name_this_thread(const char *name) {
    char shortened[16];
    size_t i = 0;
    for (; name[i] != 0 && i < sizeof shortened - 1; i++) shortened[i] = name[i];
    shortened[i] = 0;
    (void)pthread_setname_np(pthread_self(), shortened);
}
