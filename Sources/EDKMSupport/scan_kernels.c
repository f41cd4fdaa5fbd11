/* The scan of weights for Inf/NaN (an all-ones exponent) before a layer's setup: blocks of 4096
 * elements checked by a branch-free loop that the compiler vectorises (baseline SSE2), and only a
 * block with a hit searched element by element. Portable C, no run-time selection. */
#include "edkm_support.h"

#define EDKM_SCAN_BLOCK 4096

long edkm_first_all_bits_u16(const uint16_t *p, size_t n, uint16_t mask) {
    for (size_t start = 0; start < n; start += EDKM_SCAN_BLOCK) {
        size_t end = n - start < EDKM_SCAN_BLOCK ? n : start + EDKM_SCAN_BLOCK;
        unsigned hit = 0;
        for (size_t i = start; i < end; i++) hit |= (uint16_t)(p[i] & mask) == mask;
        if (hit) {
            for (size_t i = start; i < end; i++) if ((uint16_t)(p[i] & mask) == mask) return (long)i;
        }
    }
    return -1;
}

long edkm_first_all_bits_u32(const uint32_t *p, size_t n, uint32_t mask) {
    for (size_t start = 0; start < n; start += EDKM_SCAN_BLOCK) {
        size_t end = n - start < EDKM_SCAN_BLOCK ? n : start + EDKM_SCAN_BLOCK;
        unsigned hit = 0;
        for (size_t i = start; i < end; i++) hit |= (p[i] & mask) == mask;
        if (hit) {
            for (size_t i = start; i < end; i++) if ((p[i] & mask) == mask) return (long)i;
        }
    }
    return -1;
}
