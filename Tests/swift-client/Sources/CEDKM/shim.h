/* The C module of libedkm for Swift: the installed header (its directory from `pkg-config --cflags edkm`). */
#include <edkm.h>
