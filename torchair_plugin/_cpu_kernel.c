/* npu_moe_update_expert on CPU in one pass, for the reference kernel (torchair_plugin/reference.py).
 *
 * Built on first use with the machine's C compiler and loaded with ctypes
 * (torchair_plugin/_cpu_kernel.py); the Python kernel stays the fallback and the specification:
 * both are tested against the same golden loop. Why C: at serving sizes a Python kernel spends
 * more on its fixed per-call costs than on its arithmetic (bench/reference-kernel-notes.md).
 *
 * The caller has checked shapes, dtypes and attributes (torchair_plugin/checks.py) and passes
 * contiguous buffers. Values are checked here, before any read they index: a bad expert id or a
 * used expert with a replica count outside [1, F-1] returns nonzero and writes nothing the
 * caller keeps; the caller then diagnoses the values in Python for the error message.
 *
 * Floating point: every operation is one IEEE float32 add, multiply or compare, in the order
 * the reference states (a pairwise tree over adjacent pairs, zero-padded to a power of two).
 * Built with -ffp-contract=off so that no multiply-add is fused.
 */
#include <stdint.h>
#include <string.h>

#define MAX_EXPERTS 1024
#define MAX_K 16
#define MAX_COUNT 1024 /* replica counts are at most F - 1 <= 768 */

/* Nonzero: the caller runs the Python kernel, which names the bad value or input. */
enum { UPDATE_EXPERT_OK = 0, UPDATE_EXPERT_BAD_VALUES = 1, UPDATE_EXPERT_OUT_OF_CONTRACT = 2 };
enum { SCALES_FLOAT32 = 0, SCALES_BFLOAT16 = 1, SCALES_FLOAT16 = 2 };

/* row % c without a division: q = row * ceil(2^20 / c) >> 20 is floor(row / c) exactly while
 * row * c < 2^20 (here row < 512 and c <= 1024 give 2^19), and the product fits in 32 bits. A
 * division per element would cost more than the rest of balance_mode 1 together. */
#define MAX_BS 512
#define REMAINDER_SHIFT 20
static uint32_t quotient_multiplier[MAX_COUNT + 1];

__attribute__((constructor)) static void init_quotient_multipliers(void) {
    for (uint32_t c = 1; c <= MAX_COUNT; ++c) quotient_multiplier[c] = ((1u << REMAINDER_SHIFT) + c - 1) / c;
}

static inline uint32_t remainder_of(uint32_t row, uint32_t c) {
    return row - ((row * quotient_multiplier[c]) >> REMAINDER_SHIFT) * c;
}

static inline float float_from_bits(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* IEEE binary16 to binary32, exact (every half is a float). Exported for its exhaustive test. */
float torchair_plugin_half_to_float(uint16_t half) {
    uint32_t sign = (uint32_t)(half & 0x8000u) << 16;
    uint32_t exponent = (half >> 10) & 0x1fu, mantissa = half & 0x3ffu;
    if (exponent == 0x1fu) return float_from_bits(sign | 0x7f800000u | (mantissa << 13)); /* inf, nan */
    if (exponent != 0) return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    if (mantissa == 0) return float_from_bits(sign);
    uint32_t shifts = 0; /* subnormal: normalise */
    while (!(mantissa & 0x400u)) {
        mantissa <<= 1;
        ++shifts;
    }
    return float_from_bits(sign | ((113u - shifts) << 23) | ((mantissa & 0x3ffu) << 13));
}

/* balance_mode 0: replica local_rank_id / ceil(world_size / count) + 1 of each expert, chosen
 * once per expert; then one gather per element, in the ids' own dtype. */
#define UNUSABLE INT64_MIN /* the expert's count is outside [1, F-1]: a token using it is refused */
#define GATHER_MODE0(ID)                                                                            \
    do {                                                                                           \
        const ID *in = (const ID *)ids;                                                            \
        ID *out_ids = (ID *)out;                                                                   \
        for (int64_t at = 0; at < n; ++at) {                                                       \
            int64_t e = in[at];                                                                    \
            if ((uint64_t)e >= (uint64_t)experts || physical[e] == UNUSABLE) return UPDATE_EXPERT_BAD_VALUES; \
            out_ids[at] = (ID)physical[e];                                                         \
        }                                                                                          \
    } while (0)

static int map_mode0(const void *ids, int ids_are_int64, int64_t n, const int32_t *table, int64_t experts,
                     int64_t f, int64_t local_rank_id, int64_t world_size, void *out) {
    int64_t physical[MAX_EXPERTS];
    int32_t slot_by_count[MAX_COUNT + 1]; /* 0: not computed yet (a slot is >= 1) */
    memset(slot_by_count, 0, (size_t)f * sizeof slot_by_count[0]);
    for (int64_t e = 0; e < experts; ++e) {
        int32_t count = table[e * f];
        if (count < 1 || count > f - 1) {
            physical[e] = UNUSABLE;
            continue;
        }
        if (!slot_by_count[count]) {
            int64_t ranks_per_replica = (world_size + count - 1) / count;
            slot_by_count[count] = (int32_t)(local_rank_id / ranks_per_replica + 1);
        }
        physical[e] = table[e * f + slot_by_count[count]];
    }
    if (ids_are_int64) GATHER_MODE0(int64_t);
    else GATHER_MODE0(int32_t);
    return UPDATE_EXPERT_OK;
}

/* balance_mode 1: replica row % count + 1, where row is the token's row. */
#define MAP_MODE1(ID)                                                                               \
    do {                                                                                           \
        const ID *in = (const ID *)ids;                                                            \
        ID *out_ids = (ID *)out;                                                                   \
        for (int64_t row = 0, at = 0; row < bs; ++row) {                                           \
            for (int64_t j = 0; j < k; ++j, ++at) {                                                \
                int64_t e = in[at];                                                                \
                if ((uint64_t)e >= (uint64_t)experts) return UPDATE_EXPERT_BAD_VALUES;             \
                const int32_t *entry = table + e * f;                                              \
                int32_t count = entry[0];                                                          \
                if (count < 1 || count > f - 1) return UPDATE_EXPERT_BAD_VALUES;                   \
                out_ids[at] = entry[remainder_of((uint32_t)row, (uint32_t)count) + 1];             \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static int map_mode1(const void *ids, int ids_are_int64, int64_t bs, int64_t k, const int32_t *table,
                     int64_t experts, int64_t f, void *out) {
    if (ids_are_int64) MAP_MODE1(int64_t);
    else MAP_MODE1(int32_t);
    return UPDATE_EXPERT_OK;
}

/* keep[i, j] = s[j] >= threshold[j] * sum(s), the sum a tree over adjacent pairs of the row
 * zero-padded to PADDED leaves; an inactive token keeps nothing. One copy per padded width and
 * scales dtype, so that every loop has a constant trip count and no branch on the dtype: the
 * compiler unrolls and vectorises them. */
#define DEFINE_PRUNE(PADDED, KIND, SCALAR, WIDEN)                                                   \
    static void prune_##KIND##_##PADDED(const void *scales, const float *threshold,                \
                                        const uint8_t *active, int64_t bs, int64_t k, uint8_t *keep) { \
        const SCALAR *all = (const SCALAR *)scales;                                                \
        for (int64_t row = 0; row < bs; ++row) {                                                   \
            const SCALAR *in = all + row * k;                                                      \
            float leaves[PADDED], tree[PADDED];                                                    \
            for (int64_t j = 0; j < k; ++j) leaves[j] = WIDEN(in[j]);                              \
            for (int64_t j = k; j < PADDED; ++j) leaves[j] = 0.0f;                                 \
            for (int j = 0; j < PADDED / 2; ++j) tree[j] = leaves[2 * j] + leaves[2 * j + 1];      \
            for (int width = PADDED / 2; width > 1; width >>= 1)                                   \
                for (int m = 0; m < width / 2; ++m) tree[m] = tree[2 * m] + tree[2 * m + 1];       \
            float sum = PADDED == 1 ? leaves[0] : tree[0];                                         \
            uint8_t *row_keep = keep + row * k;                                                    \
            if (active && !active[row]) {                                                          \
                memset(row_keep, 0, (size_t)k);                                                    \
                continue;                                                                          \
            }                                                                                      \
            for (int64_t j = 0; j < k; ++j) row_keep[j] = leaves[j] >= threshold[j] * sum;         \
        }                                                                                          \
    }

static inline float widen_float32(float value) { return value; }
static inline float widen_bfloat16(uint16_t bits) { return float_from_bits((uint32_t)bits << 16); }

#define DEFINE_PRUNE_WIDTHS(KIND, SCALAR, WIDEN)                                                    \
    DEFINE_PRUNE(1, KIND, SCALAR, WIDEN)                                                           \
    DEFINE_PRUNE(2, KIND, SCALAR, WIDEN)                                                           \
    DEFINE_PRUNE(4, KIND, SCALAR, WIDEN)                                                           \
    DEFINE_PRUNE(8, KIND, SCALAR, WIDEN)                                                           \
    DEFINE_PRUNE(16, KIND, SCALAR, WIDEN)                                                          \
    static void prune_##KIND(const void *scales, const float *threshold, const uint8_t *active,   \
                             int64_t bs, int64_t k, uint8_t *keep) {                               \
        if (k <= 1) prune_##KIND##_1(scales, threshold, active, bs, k, keep);                      \
        else if (k <= 2) prune_##KIND##_2(scales, threshold, active, bs, k, keep);                 \
        else if (k <= 4) prune_##KIND##_4(scales, threshold, active, bs, k, keep);                 \
        else if (k <= 8) prune_##KIND##_8(scales, threshold, active, bs, k, keep);                 \
        else prune_##KIND##_16(scales, threshold, active, bs, k, keep);                            \
    }
DEFINE_PRUNE_WIDTHS(float32, float, widen_float32)
DEFINE_PRUNE_WIDTHS(bfloat16, uint16_t, widen_bfloat16)
DEFINE_PRUNE_WIDTHS(float16, uint16_t, torchair_plugin_half_to_float)

static void prune(const void *scales, int kind, const float *threshold, const uint8_t *active, int64_t bs,
                  int64_t k, uint8_t *keep) {
    if (kind == SCALES_FLOAT32) prune_float32(scales, threshold, active, bs, k, keep);
    else if (kind == SCALES_BFLOAT16) prune_bfloat16(scales, threshold, active, bs, k, keep);
    else prune_float16(scales, threshold, active, bs, k, keep);
}

int torchair_plugin_update_expert(const void *expert_ids, int ids_are_int64, int64_t bs, int64_t k,
                                  const int32_t *eplb_table, int64_t experts, int64_t f, const void *scales,
                                  int scales_kind, const float *threshold, const uint8_t *active,
                                  int64_t local_rank_id, int64_t world_size, int balance_mode,
                                  void *balanced_ids, uint8_t *keep) {
    /* The caller's checks already hold these; they are repeated because a read this kernel
     * indexes must never leave the buffers, whatever a future caller passes. */
    if (bs < 1 || bs > MAX_BS || k < 1 || k > MAX_K || experts < 1 || experts > MAX_EXPERTS || f < 2 ||
        f - 1 > MAX_COUNT || (balance_mode == 0 && (local_rank_id < 0 || local_rank_id >= world_size)))
        return UPDATE_EXPERT_OUT_OF_CONTRACT;
    int status = balance_mode == 0
        ? map_mode0(expert_ids, ids_are_int64, bs * k, eplb_table, experts, f, local_rank_id, world_size, balanced_ids)
        : map_mode1(expert_ids, ids_are_int64, bs, k, eplb_table, experts, f, balanced_ids);
    if (status != UPDATE_EXPERT_OK) return status;
    if (scales) prune(scales, scales_kind, threshold, active, bs, k, keep);
    else memset(keep, 1, (size_t)(bs * k));
    return UPDATE_EXPERT_OK;
}

/* The same, its 16 arguments packed as int64 (pointers as addresses, NULL as 0) in one buffer:
 * through ctypes, one bytes argument costs about a third of 16 typed ones. */
int torchair_plugin_update_expert_packed(const char *packed) {
    int64_t a[16];
    memcpy(a, packed, sizeof a);
    return torchair_plugin_update_expert((const void *)(intptr_t)a[0], (int)a[1], a[2], a[3],
                                         (const int32_t *)(intptr_t)a[4], a[5], a[6], (const void *)(intptr_t)a[7],
                                         (int)a[8], (const float *)(intptr_t)a[9], (const uint8_t *)(intptr_t)a[10],
                                         a[11], a[12], (int)a[13], (void *)(intptr_t)a[14], (uint8_t *)(intptr_t)a[15]);
}
