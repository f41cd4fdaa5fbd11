/* Processor and heap facts: cores for the thread pool, usable sizes for heap accounting. */
#define _GNU_SOURCE
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
