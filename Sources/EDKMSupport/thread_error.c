/* The thread-local last-error message behind edkm_last_error(). */
#include <string.h>
#include "edkm_support.h"

enum { EDKM_ERROR_CAPACITY = 1024 };
static _Thread_local char edkm_error_buffer[EDKM_ERROR_CAPACITY];

void edkm_error_set(const char *message, size_t length) {
    if (message == NULL) length = 0;
    if (length >= EDKM_ERROR_CAPACITY) length = EDKM_ERROR_CAPACITY - 1;
    if (length > 0) memcpy(edkm_error_buffer, message, length);
    edkm_error_buffer[length] = '\0';
}

const char *edkm_error_get(void) { return edkm_error_buffer; }
