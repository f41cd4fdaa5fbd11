/* Wrappers over the library's private jemalloc (built by scripts/build-jemalloc.sh). */
#define JEMALLOC_NO_DEMANGLE 1
#if __has_include(<jemalloc/jemalloc.h>)
#include <jemalloc/jemalloc.h>
#else
#error "jemalloc headers not found: run scripts/build-jemalloc.sh (see README)"
#endif
#include <stdio.h>
#include "edkm_support.h"

/* This jemalloc serves only the offload arenas, which runtimes create and destroy. Its default
 * opt.retain keeps a destroyed arena's address space mapped (about 4 KiB of RSS per used arena
 * that never comes back), so long-lived processes that create runtimes repeatedly would grow.
 * retain:false returns it to the system when the arena is destroyed. (JE_MALLOC_CONF still
 * overrides this for debugging.) Not exported from libedkm.so: Sources/EDKMCAPI/exports.map keeps
 * every symbol but edkm_* local, so no other jemalloc in the process can see or interpose it. */
const char *je_malloc_conf = "retain:false";

static int flags_for(unsigned index) {
    return MALLOCX_ARENA(index) | MALLOCX_TCACHE_NONE | MALLOCX_ALIGN(64);
}

int edkm_jem_arena_create(unsigned *index) {
    size_t len = sizeof(*index);
    return je_mallctl("arenas.create", index, &len, NULL, 0);
}

int edkm_jem_arena_destroy(unsigned index) {
    char name[64];
    snprintf(name, sizeof name, "arena.%u.destroy", index);
    return je_mallctl(name, NULL, NULL, NULL, 0);
}

void *edkm_jem_arena_alloc(unsigned index, size_t size) {
    if (size == 0) size = 1;
    return je_mallocx(size, flags_for(index));
}

void edkm_jem_arena_free(unsigned index, void *ptr, size_t size) {
    if (ptr == NULL) return;
    if (size == 0) size = 1;
    je_sdallocx(ptr, size, flags_for(index));
}

size_t edkm_jem_arena_usable_size(unsigned index, size_t size) {
    if (size == 0) size = 1;
    return je_nallocx(size, flags_for(index));
}

static int read_size(const char *name, size_t *value) {
    size_t len = sizeof(*value);
    return je_mallctl(name, value, &len, NULL, 0);
}

int edkm_jem_arena_stats(unsigned index, uint64_t *small_allocated, uint64_t *large_allocated,
                        uint64_t *active_bytes) {
    uint64_t epoch = 1, old_epoch = 0;
    size_t len = sizeof(epoch);
    if (je_mallctl("epoch", &old_epoch, &len, &epoch, sizeof(epoch)) != 0) return -1;
    char name[96];
    size_t small = 0, large = 0, pactive = 0, page = 0;
    snprintf(name, sizeof name, "stats.arenas.%u.small.allocated", index);
    if (read_size(name, &small) != 0) return -1;
    snprintf(name, sizeof name, "stats.arenas.%u.large.allocated", index);
    if (read_size(name, &large) != 0) return -1;
    snprintf(name, sizeof name, "stats.arenas.%u.pactive", index);
    if (read_size(name, &pactive) != 0) return -1;
    if (read_size("arenas.page", &page) != 0) return -1;
    *small_allocated = small;
    *large_allocated = large;
    *active_bytes = (uint64_t)pactive * page;
    return 0;
}

int edkm_jem_stats_enabled(void) {
    _Bool enabled = 0;
    size_t len = sizeof(enabled);
    if (je_mallctl("config.stats", &enabled, &len, NULL, 0) != 0) return 0;
    return enabled ? 1 : 0;
}
