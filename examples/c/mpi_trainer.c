/*
 * mpi_trainer.c: data-parallel DKM fine-tuning with libedkm and MPI, sharded saved state.
 *
 * The idea of mlp_trainer.c (a 32 -> 128 -> 10 MLP on a synthetic 10-class data set, float training,
 * then post-training k-means and DKM fine-tuning at 4 and 3 bits), run data-parallel on the same
 * model, data and optimiser (examples/c/mlp/mlp.h):
 *
 *   - every rank generates the same data set and the same initial weights (seeded), and trains on
 *     its own 1/world_size of each global batch;
 *   - the gradients of every step are summed over the ranks with MPI_Allreduce (and divided by the
 *     world size), so every rank takes the same Adam step and the weights stay identical;
 *   - DKM fine-tuning runs with the runtime's saved_mode = EDKM_SAVED_SHARD and an edkm_communicator
 *     whose all_gather is MPI_Allgather and all_reduce_sum is MPI_Allreduce(MPI_DOUBLE, MPI_SUM):
 *     each rank keeps only its 1/world_size of every forward's index list, and the backward
 *     all-gathers it. The float32 weights are keyed by their float16 rounding (f32_key_dtype F16) so
 *     that DKM takes the uniquified path, the one that keeps an index list to shard.
 *
 * At the end every rank checks that its weights, biases and centroids are bit-identical to rank 0's,
 * and rank 0 prints the accuracy table and, per rank, the saved bytes (largest saved state of a step,
 * arena peak) and the communicator bytes. Last, the histogram-native weight-sharded forward
 * (edkm_layer_forward_shard: each rank hands over only its slice of W1; U-sized all-reduces) is
 * compared with the full-tensor forward + backward, and its traffic is printed.
 *
 * Build and run (from the repository root, after `scripts/build-dist.sh`): examples/c/build-mpi.sh
 *   mpicc -std=c99 -O2 -Wall -Wextra -I include examples/c/mpi_trainer.c examples/c/mlp/mlp.c \
 *         -L .build-dist/lib -ledkm -Wl,-rpath,$PWD/.build-dist/lib -lm -o examples/c/bin/mpi_trainer
 *   mpirun -np 2 examples/c/bin/mpi_trainer      (as root: mpirun --allow-run-as-root --oversubscribe ...)
 * Exit status: 0 on success; 1 on an edkm or MPI error or a failed check (on any rank); 2 on bad usage.
 */
#define _POSIX_C_SOURCE 199309L

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "edkm.h"
#include "mlp/mlp.h"

static int g_rank = 0, g_world = 1;

static void die(const char *what) {
    fprintf(stderr, "mpi_trainer[rank %d]: %s\n", g_rank, what);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

#define EDKM_CHECK(call)                                                                           \
    do {                                                                                           \
        edkm_status st_ = (call);                                                                  \
        if (st_ != EDKM_OK) {                                                                      \
            fprintf(stderr, "mpi_trainer[rank %d] %s:%d: %s: %s: %s\n", g_rank, __FILE__, __LINE__, \
                    #call, edkm_status_name(st_), edkm_last_error());                              \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                          \
        }                                                                                          \
    } while (0)

#define MPI_CHECK(call)                                            \
    do {                                                           \
        if ((call) != MPI_SUCCESS) die("MPI call failed: " #call); \
    } while (0)

/* ============================ The MPI communicator lent to libedkm ============================ */

typedef struct {
    MPI_Comm comm;
    unsigned long long gather_calls, gather_bytes, reduce_calls;
} mpi_comm_ctx;

static int mpi_all_gather(void *user, const void *send, void *recv, size_t bytes) {
    mpi_comm_ctx *c = (mpi_comm_ctx *)user;
    if (bytes > (size_t)INT_MAX) return 1;
    c->gather_calls++;
    c->gather_bytes += bytes;
    return MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, c->comm) == MPI_SUCCESS ? 0 : 1;
}

static int mpi_all_reduce_sum(void *user, double *data, size_t count) {
    mpi_comm_ctx *c = (mpi_comm_ctx *)user;
    if (count > (size_t)INT_MAX) return 1;
    c->reduce_calls++;
    return MPI_Allreduce(MPI_IN_PLACE, data, (int)count, MPI_DOUBLE, MPI_SUM, c->comm) == MPI_SUCCESS ? 0 : 1;
}

/* 1 on every rank when buf[0..bytes) equals rank 0's. */
static int same_as_rank0(const void *buf, size_t bytes) {
    unsigned char *r0 = (unsigned char *)xmalloc(bytes);
    int ok, all;
    memcpy(r0, buf, bytes);
    MPI_CHECK(MPI_Bcast(r0, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD));
    ok = memcmp(r0, buf, bytes) == 0;
    MPI_CHECK(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    free(r0);
    return all;
}

/* ============================ edkm helpers ============================ */


static edkm_layer *make_layer(edkm_runtime *rt, unsigned bits, int key_dtype, const float *w, int rows, int cols) {
    edkm_layer_config cfg;
    edkm_layer *layer = NULL;
    int64_t shape[2];
    shape[0] = rows;
    shape[1] = cols;
    edkm_layer_config_init(&cfg);
    cfg.bits = bits;
    cfg.f32_key_dtype = key_dtype;
    EDKM_CHECK(edkm_layer_create(rt, &cfg, shape, 2, &layer));
    EDKM_CHECK(edkm_layer_init_centroids(layer, w, EDKM_DTYPE_F32, (size_t)rows * cols));
    return layer;
}

/* Hard palettization: export (F16 LUT + packed indices) and unpack to float32. Returns the bytes. */
static size_t export_hard(edkm_layer *layer, const float *w, size_t n, float *hard) {
    size_t lut_count = 0, packed_bytes = 0;
    uint16_t *lut;
    uint8_t *packed;
    EDKM_CHECK(edkm_layer_export_sizes(layer, &lut_count, &packed_bytes));
    lut = (uint16_t *)xmalloc(lut_count * 2);
    packed = (uint8_t *)xmalloc(packed_bytes);
    EDKM_CHECK(edkm_layer_export(layer, w, EDKM_DTYPE_F32, n, lut, EDKM_DTYPE_F16, packed, packed_bytes));
    EDKM_CHECK(edkm_layer_unpack(layer, lut, EDKM_DTYPE_F16, packed, packed_bytes, hard, EDKM_DTYPE_F32, n));
    free(lut);
    free(packed);
    return lut_count * 2 + packed_bytes;
}

/* ============================ Weight-sharded forward (histogram-native) ============================ */

/*
 * edkm_layer_forward_shard: each rank hands the library only its slice of W1 (as FSDP / ZeRO-3 would
 * hold it); the ranks all-reduce the key histogram in forward and the U-sized gradient sums in
 * backward. Checks that the slice's w~ and dL/dw equal the same elements of an ordinary full-tensor
 * forward + backward from the same centroids, and returns the communicator bytes it took (this rank).
 */
static double weight_shard_check(edkm_runtime *rt, unsigned bits, int key_dtype, const float *w1, const float *g1,
                                 double *max_rel_diff) {
    edkm_layer *layer = make_layer(rt, bits, key_dtype, w1, HID, DIM);
    edkm_saved_state *full = NULL, *part = NULL;
    edkm_runtime_stats s0, s1;
    float c0[256], *soft_full = (float *)xmalloc(sizeof(float) * N_W1), *grad_full = (float *)xmalloc(sizeof(float) * N_W1);
    float *soft_part = (float *)xmalloc(sizeof(float) * N_W1), *grad_part = (float *)xmalloc(sizeof(float) * N_W1);
    size_t nc = 0, i;
    const size_t per = (N_W1 + (size_t)g_world - 1) / (size_t)g_world;
    const size_t lo = per * (size_t)g_rank < N_W1 ? per * (size_t)g_rank : N_W1;
    const size_t n = lo + per <= N_W1 ? per : N_W1 - lo;
    double diff = 0;

    EDKM_CHECK(edkm_layer_centroid_count(layer, &nc));
    if (nc > 256) die("unexpected centroid count");
    EDKM_CHECK(edkm_layer_get_centroids(layer, c0, nc));
    /* reference: the whole tensor on this rank (no collective in this saved mode) */
    EDKM_CHECK(edkm_layer_forward(layer, w1, EDKM_DTYPE_F32, N_W1, soft_full, EDKM_DTYPE_F32, &full));
    EDKM_CHECK(edkm_saved_state_backward(full, g1, grad_full, EDKM_DTYPE_F32, N_W1, w1));
    edkm_saved_state_destroy(full);
    /* sharded: this rank's slice only */
    EDKM_CHECK(edkm_layer_set_centroids(layer, c0, nc));
    s0.struct_size = sizeof s0;
    EDKM_CHECK(edkm_runtime_get_stats(rt, &s0));
    EDKM_CHECK(edkm_layer_forward_shard(layer, w1 + lo, EDKM_DTYPE_F32, lo, n, soft_part, EDKM_DTYPE_F32, &part));
    EDKM_CHECK(edkm_saved_state_backward(part, g1 + lo, grad_part, EDKM_DTYPE_F32, n, w1 + lo));
    edkm_saved_state_destroy(part);
    s1.struct_size = sizeof s1;
    EDKM_CHECK(edkm_runtime_get_stats(rt, &s1));
    { /* max |sharded - full| / max |full|, for w~ and for dL/dw, over this rank's slice */
        double ds = 0, ms = 0, dg = 0, mg = 0;
        for (i = 0; i < n; ++i) {
            ds = fmax(ds, fabs((double)soft_part[i] - soft_full[lo + i]));
            ms = fmax(ms, fabs((double)soft_full[lo + i]));
            dg = fmax(dg, fabs((double)grad_part[i] - grad_full[lo + i]));
            mg = fmax(mg, fabs((double)grad_full[lo + i]));
        }
        diff = fmax(ms > 0 ? ds / ms : ds, mg > 0 ? dg / mg : dg);
    }
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &diff, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    *max_rel_diff = diff;
    edkm_layer_destroy(layer);
    free(soft_full); free(grad_full); free(soft_part); free(grad_part);
    return (double)(s1.communicator_bytes - s0.communicator_bytes);
}

/* ============================ main ============================ */

typedef struct {
    const char *model;
    unsigned bits;
    double acc;
    size_t bytes;
} row_t;

typedef struct { /* per rank, gathered to rank 0 for the report */
    double max_saved, arena_peak, communicator_bytes, gather_calls, gather_bytes, shard_fwd_bwd_bytes, shard_diff;
} rank_stats;

int main(int argc, char **argv) {
    int float_epochs = 20, ft_epochs = 4, i, e, b, bi, nbits = 2, saved_mode = EDKM_SAVED_SHARD;
    int key_dtype = EDKM_DTYPE_F16;
    unsigned bits_list[2] = {4, 3}, num_threads = 1;
    dataset train, test;
    float *p_float, *p, *grad, *gw, *hard1, *hard2, *soft1, *soft2;
    int *order, local, nrows = 0, ok = 1;
    adam_t adam;
    rng_t r;
    row_t rows[5];
    rank_stats mine, *all = NULL;
    mpi_comm_ctx ctx;
    edkm_communicator comm;
    edkm_runtime_config rcfg;
    edkm_runtime *rt = NULL;
    edkm_runtime_stats rs;
    long step, total;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_world);
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (i = 1; i < argc; ++i) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--epochs") && v) float_epochs = atoi(argv[++i]);
        else if (!strcmp(a, "--ft-epochs") && v) ft_epochs = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && v) num_threads = (unsigned)atoi(argv[++i]);
        else if (!strcmp(a, "--keys") && v) {
            ++i;
            key_dtype = !strcmp(v, "bf16") ? EDKM_DTYPE_BF16 : !strcmp(v, "f32") ? EDKM_DTYPE_F32 : EDKM_DTYPE_F16;
        } else if (!strcmp(a, "--saved-mode") && v) {
            ++i;
            saved_mode = !strcmp(v, "histogram") ? EDKM_SAVED_HISTOGRAM : !strcmp(v, "uniquify") ? EDKM_SAVED_UNIQUIFY
                                                                                               : EDKM_SAVED_SHARD;
        } else if (!strcmp(a, "--bits") && v) {
            bits_list[0] = (unsigned)atoi(argv[++i]);
            nbits = 1;
        } else {
            if (g_rank == 0)
                fprintf(stderr, "usage: mpirun -np N mpi_trainer [--epochs N] [--ft-epochs N] [--bits B] [--threads N]\n"
                                "         [--keys f16|bf16|f32] [--saved-mode shard|uniquify|histogram]\n");
            MPI_Finalize();
            return 2;
        }
    }
    if (NTRAIN % (BATCH * 1) != 0 || BATCH % g_world != 0) die("the global batch (64) must divide evenly over the ranks");
    local = BATCH / g_world;
    if (g_rank == 0)
        printf("libedkm %s, %d ranks; each trains on %d of every %d-sample global batch; gradients summed with MPI_Allreduce\n",
               edkm_version_string(), g_world, local, BATCH);

    make_data(42, &train, &test);
    p_float = (float *)xmalloc(sizeof(float) * NPARAM);
    p = (float *)xmalloc(sizeof(float) * NPARAM);
    grad = (float *)xmalloc(sizeof(float) * NPARAM);
    gw = (float *)xmalloc(sizeof(float) * N_W1);
    hard1 = (float *)xmalloc(sizeof(float) * N_W1);
    hard2 = (float *)xmalloc(sizeof(float) * N_W2);
    soft1 = (float *)xmalloc(sizeof(float) * N_W1);
    soft2 = (float *)xmalloc(sizeof(float) * N_W2);
    order = (int *)xmalloc(sizeof(int) * NTRAIN);
    adam_init(&adam, NPARAM);
    for (i = 0; i < NTRAIN; ++i) order[i] = i;
    r.s = 42 * 31 + 5; /* the same shuffles on every rank: rank k takes its slice of each global batch */

    /* ---------------- float training, data-parallel ---------------- */
    init_params(p_float, 44);
    adam_reset(&adam);
    total = (long)float_epochs * (NTRAIN / BATCH);
    for (step = 0, e = 0; e < float_epochs; ++e) {
        shuffle(order, NTRAIN, &r);
        for (b = 0; b + BATCH <= NTRAIN; b += BATCH) {
            memset(grad, 0, sizeof(float) * NPARAM);
            mlp_batch(view_of(p_float), &train, order + b + g_rank * local, local, grad, 1.0 / BATCH, NULL);
            MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, grad, NPARAM, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD)); /* sum = mean over the global batch */
            adam_step(&adam, p_float, grad, cosine_lr(3e-3, step++, total));
        }
    }
    rows[nrows].model = "float32";
    rows[nrows].bits = 32;
    rows[nrows].acc = accuracy(view_of(p_float), &test);
    rows[nrows++].bytes = (size_t)(N_W1 + N_W2) * 4;
    if (!same_as_rank0(p_float, sizeof(float) * NPARAM)) die("float weights differ between ranks");
    if (g_rank == 0) printf("float training: %d epochs, test acc %.2f %%, weights identical on all ranks\n", float_epochs,
                            100 * rows[0].acc);

    /* ---------------- the runtime: sharded saved state over MPI ---------------- */
    memset(&ctx, 0, sizeof ctx);
    ctx.comm = MPI_COMM_WORLD;
    memset(&comm, 0, sizeof comm);
    comm.struct_size = sizeof comm;
    comm.rank = g_rank;
    comm.world_size = g_world;
    comm.user_data = &ctx;
    comm.all_gather = mpi_all_gather;
    comm.all_reduce_sum = mpi_all_reduce_sum;
    edkm_runtime_config_init(&rcfg);
    rcfg.num_threads = num_threads;
    rcfg.saved_mode = saved_mode;
    rcfg.communicator = &comm;
    EDKM_CHECK(edkm_runtime_create(&rcfg, &rt));
    memset(&mine, 0, sizeof mine);

    for (bi = 0; bi < nbits; ++bi) {
        const unsigned bits = bits_list[bi];
        edkm_layer *l1, *l2;
        model_view v;
        size_t bytes;
        float c1[256], c2[256];
        size_t n1 = 0, n2 = 0;

        /* post-training k-means */
        l1 = make_layer(rt, bits, key_dtype, p_float + OFF_W1, HID, DIM);
        l2 = make_layer(rt, bits, key_dtype, p_float + OFF_W2, NCLS, HID);
        bytes = export_hard(l1, p_float + OFF_W1, N_W1, hard1) + export_hard(l2, p_float + OFF_W2, N_W2, hard2);
        v = view_of(p_float);
        v.w1 = hard1;
        v.w2 = hard2;
        rows[nrows].model = "post-training k-means";
        rows[nrows].bits = bits;
        rows[nrows].acc = accuracy(v, &test);
        rows[nrows++].bytes = bytes;

        /* DKM fine-tuning, data-parallel, sharded saved state (layers keep the k-means centroids) */
        memcpy(p, p_float, sizeof(float) * NPARAM);
        adam_reset(&adam);
        EDKM_CHECK(edkm_runtime_reset_peak(rt));
        total = (long)ft_epochs * (NTRAIN / BATCH);
        for (step = 0, e = 0; e < ft_epochs; ++e) {
            shuffle(order, NTRAIN, &r);
            for (b = 0; b + BATCH <= NTRAIN; b += BATCH) {
                edkm_saved_state *sv1 = NULL, *sv2 = NULL;
                uint64_t sb1 = 0, sb2 = 0;
                EDKM_CHECK(edkm_layer_forward(l1, p + OFF_W1, EDKM_DTYPE_F32, N_W1, soft1, EDKM_DTYPE_F32, &sv1));
                EDKM_CHECK(edkm_layer_forward(l2, p + OFF_W2, EDKM_DTYPE_F32, N_W2, soft2, EDKM_DTYPE_F32, &sv2));
                EDKM_CHECK(edkm_saved_state_bytes(sv1, &sb1));
                EDKM_CHECK(edkm_saved_state_bytes(sv2, &sb2));
                if ((double)(sb1 + sb2) > mine.max_saved) mine.max_saved = (double)(sb1 + sb2);
                /* local dL/dw~ on this rank's slice of the batch, summed over ranks */
                memset(grad, 0, sizeof(float) * NPARAM);
                v = view_of(p);
                v.w1 = soft1;
                v.w2 = soft2;
                mlp_batch(v, &train, order + b + g_rank * local, local, grad, 1.0 / BATCH, NULL);
                MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, grad, NPARAM, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
                /* dL/dw through DKM: each backward all-gathers the sharded index list (a collective) */
                EDKM_CHECK(edkm_saved_state_backward(sv1, grad + OFF_W1, gw, EDKM_DTYPE_F32, N_W1, p + OFF_W1));
                memcpy(grad + OFF_W1, gw, sizeof(float) * N_W1);
                EDKM_CHECK(edkm_saved_state_backward(sv2, grad + OFF_W2, gw, EDKM_DTYPE_F32, N_W2, p + OFF_W2));
                memcpy(grad + OFF_W2, gw, sizeof(float) * N_W2);
                edkm_saved_state_destroy(sv1);
                edkm_saved_state_destroy(sv2);
                adam_step(&adam, p, grad, cosine_lr(2e-3, step++, total));
            }
        }
        /* centroids for the final weights (no saved state), then hard export */
        EDKM_CHECK(edkm_layer_forward(l1, p + OFF_W1, EDKM_DTYPE_F32, N_W1, soft1, EDKM_DTYPE_F32, NULL));
        EDKM_CHECK(edkm_layer_forward(l2, p + OFF_W2, EDKM_DTYPE_F32, N_W2, soft2, EDKM_DTYPE_F32, NULL));
        bytes = export_hard(l1, p + OFF_W1, N_W1, hard1) + export_hard(l2, p + OFF_W2, N_W2, hard2);
        v = view_of(p);
        v.w1 = hard1;
        v.w2 = hard2;
        rows[nrows].model = "DKM fine-tuned (DP)";
        rows[nrows].bits = bits;
        rows[nrows].acc = accuracy(v, &test);
        rows[nrows++].bytes = bytes;

        /* every rank must hold the same weights, centroids and hard model */
        EDKM_CHECK(edkm_layer_centroid_count(l1, &n1));
        EDKM_CHECK(edkm_layer_centroid_count(l2, &n2));
        if (n1 > 256 || n2 > 256) die("unexpected centroid count");
        EDKM_CHECK(edkm_layer_get_centroids(l1, c1, n1));
        EDKM_CHECK(edkm_layer_get_centroids(l2, c2, n2));
        ok &= same_as_rank0(p, sizeof(float) * NPARAM);
        ok &= same_as_rank0(c1, sizeof(float) * n1);
        ok &= same_as_rank0(c2, sizeof(float) * n2);
        ok &= same_as_rank0(hard1, sizeof(float) * N_W1);
        ok &= same_as_rank0(hard2, sizeof(float) * N_W2);
        if (!ok) die("weights or centroids differ between ranks after DKM fine-tuning");
        rs.struct_size = sizeof rs;
        EDKM_CHECK(edkm_runtime_get_stats(rt, &rs));
        if ((double)rs.arena_peak > mine.arena_peak) mine.arena_peak = (double)rs.arena_peak;
        if (g_rank == 0)
            printf("%u bits: DKM fine-tuning %d epochs (data-parallel); weights, biases, centroids and hard weights "
                   "identical on all %d ranks\n", bits, ft_epochs, g_world);
        edkm_layer_destroy(l1);
        edkm_layer_destroy(l2);
    }

    rs.struct_size = sizeof rs;
    EDKM_CHECK(edkm_runtime_get_stats(rt, &rs));
    if (rs.live_saved_states != 0) die("saved states alive at the end");
    mine.communicator_bytes = (double)rs.communicator_bytes;
    if (key_dtype != EDKM_DTYPE_F32) { /* the histogram-native weight-sharded forward needs 16-bit keys */
        edkm_runtime *rt_hist = NULL;
        float *g1 = (float *)xmalloc(sizeof(float) * N_W1);
        rng_t rg;
        rg.s = 77;
        for (i = 0; i < N_W1; ++i) g1[i] = (float)(rng_normal(&rg) * 1e-3);
        rcfg.saved_mode = EDKM_SAVED_HISTOGRAM;
        EDKM_CHECK(edkm_runtime_create(&rcfg, &rt_hist));
        mine.shard_fwd_bwd_bytes = weight_shard_check(rt_hist, bits_list[0], key_dtype, p + OFF_W1, g1, &mine.shard_diff);
        edkm_runtime_destroy(rt_hist);
        free(g1);
        if (!(mine.shard_diff < 1e-6)) {
            fprintf(stderr, "max relative difference %g\n", mine.shard_diff);
            die("the weight-sharded forward/backward differs from the full one");
        }
    }
    mine.gather_calls = (double)ctx.gather_calls;
    mine.gather_bytes = (double)ctx.gather_bytes;
    if (saved_mode == EDKM_SAVED_SHARD && g_world > 1 && ctx.gather_calls == 0) die("no all-gather ran in SHARD mode");
    if (g_rank == 0) all = (rank_stats *)xmalloc(sizeof(rank_stats) * (size_t)g_world);
    MPI_CHECK(MPI_Gather(&mine, 7, MPI_DOUBLE, all, 7, MPI_DOUBLE, 0, MPI_COMM_WORLD));

    if (g_rank == 0) {
        static const char *const mode_names[] = {"histogram", "dkm", "marshal", "dedup", "uniquify", "shard"};
        printf("\n%-24s %4s %10s %14s\n", "model", "bits", "test acc", "weight bytes");
        for (i = 0; i < nrows; ++i)
            printf("%-24s %4u %9.2f%% %14lu\n", rows[i].model, rows[i].bits, 100 * rows[i].acc, (unsigned long)rows[i].bytes);
        printf("\nsaved state per rank (saved_mode %s, %d ranks, f32 weights keyed by %s; maxima over the bit widths):\n", mode_names[saved_mode], g_world,
               key_dtype == EDKM_DTYPE_F16 ? "f16" : key_dtype == EDKM_DTYPE_BF16 ? "bf16" : "f32 (dense)");
        printf("%4s %22s %16s %20s %14s %18s\n", "rank", "max saved bytes/step", "arena peak", "communicator_bytes",
               "all_gathers", "all_gather bytes");
        for (i = 0; i < g_world; ++i)
            printf("%4d %22.0f %16.0f %20.0f %14.0f %18.0f\n", i, all[i].max_saved, all[i].arena_peak,
                   all[i].communicator_bytes, all[i].gather_calls, all[i].gather_bytes);
        printf("(the full 16-bit index lists of W1 and W2 would be %d bytes per step; each rank keeps 1/%d of them)\n",
               2 * (N_W1 + N_W2), g_world);
        if (key_dtype != EDKM_DTYPE_F32) {
            printf("\nweight-sharded forward (edkm_layer_forward_shard, histogram-native; each rank hands over 1/%d of W1, "
                   "%u bits):\n  w~ and dL/dw of every slice vs the full-tensor ones: max |diff| / max |value| %.1e%s;\n"
                   "  communicator bytes per forward + backward, rank 0: %.0f (all-reduces of the key histogram and the "
                   "U gradient sums; independent of N), vs %d bytes for W1's index-list shard in SHARD mode's all-gather\n"
                   "  (a 4096x4096 matrix: %.0f bytes of index-list shard per rank and backward in SHARD mode)\n",
                   g_world, bits_list[0], all[0].shard_diff,
                   all[0].shard_diff > 1e-6 ? " (more than float rounding: the sharded backward's dL/dw differs)" : "",
                   all[0].shard_fwd_bwd_bytes, 2 * ((N_W1 + g_world - 1) / g_world), 2.0 * 4096 * 4096 / g_world);
        }
        for (i = 1; i < nrows; ++i)
            if (rows[i].bits >= 3 && rows[i].acc < rows[0].acc - 0.08) die("a >= 3-bit palettized model lost > 8 points");
        if (rows[0].acc < 0.6) die("float training failed");
        free(all);
    }
    edkm_runtime_destroy(rt);
    free(p_float); free(p); free(grad); free(gw); free(hard1); free(hard2); free(soft1); free(soft2);
    free(order); adam_free(&adam); free(train.x); free(train.y); free(test.x); free(test.y);
    MPI_Finalize();
    return 0;
}
