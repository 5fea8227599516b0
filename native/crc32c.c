/* CRC-32C (Castagnoli) of records and block headers: slicing-by-8 in software, the SSE4.2
 * instruction where the CPU has it (chosen once, at module init). */
#include "core.h"

static uint32_t crc_table[8][256];
static int have_hw_crc;

/* The crc32 instruction takes 3 cycles but starts one every cycle: a long buffer is cut in
 * three lanes whose CRCs run at once, then joined. The CRC of lane + lane2 is the CRC of
 * lane shifted over as many zero bytes as lane2 holds, xor the CRC of lane2 from 0 (the
 * CRC is linear); the shift over a lane's length is a multiplication, by one table a byte
 * of the CRC. Two lane lengths: a large value's record (and a batch: the scan at open
 * checks 12.6 GiB of them at 100M records) and a record of about 1 KiB. */
#define CRC_LONG 8192
#define CRC_SHORT 256
static uint32_t crc_shift_long[4][256], crc_shift_short[4][256];

static void crc_shift_init(uint32_t table[4][256], size_t len);

void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_hw_crc = __builtin_cpu_supports("sse4.2");
#endif
    crc_shift_init(crc_shift_long, CRC_LONG);
    crc_shift_init(crc_shift_short, CRC_SHORT);
}

static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t n) {
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_table[7][w & 0xFF] ^ crc_table[6][(w >> 8) & 0xFF] ^
              crc_table[5][(w >> 16) & 0xFF] ^ crc_table[4][(w >> 24) & 0xFF] ^
              crc_table[3][(w >> 32) & 0xFF] ^ crc_table[2][(w >> 40) & 0xFF] ^
              crc_table[1][(w >> 48) & 0xFF] ^ crc_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
    return crc;
}

/* table[k][b]: the CRC register b << 8k shifted over len zero bytes (linear in the register:
 * made from the shifts of its 32 bits) */
static void crc_shift_init(uint32_t table[4][256], size_t len) {
    static const uint8_t zeros[CRC_LONG];
    uint32_t bit[32];
    for (int i = 0; i < 32; i++) bit[i] = crc_sw(UINT32_C(1) << i, zeros, len);
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) {
            uint32_t v = 0;
            for (int i = 0; i < 8; i++)
                if (b >> i & 1) v ^= bit[8 * k + i];
            table[k][b] = v;
        }
}

static inline uint32_t crc_shift(const uint32_t table[4][256], uint32_t crc) {
    return table[0][crc & 0xFF] ^ table[1][(crc >> 8) & 0xFF] ^ table[2][(crc >> 16) & 0xFF] ^ table[3][crc >> 24];
}

#if defined(__x86_64__)
/* three lanes of len bytes from p, the first from crc: the CRC of all 3 * len bytes */
__attribute__((target("sse4.2"))) static inline uint64_t crc_hw_lanes(uint64_t crc, const uint8_t *p, size_t len,
                                                                      const uint32_t shift[4][256]) {
    uint64_t c0 = crc, c1 = 0, c2 = 0;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p + len + i, 8);
        memcpy(&w2, p + 2 * len + i, 8);
        c0 = __builtin_ia32_crc32di(c0, w0);
        c1 = __builtin_ia32_crc32di(c1, w1);
        c2 = __builtin_ia32_crc32di(c2, w2);
    }
    return crc_shift(shift, crc_shift(shift, (uint32_t)c0) ^ (uint32_t)c1) ^ (uint32_t)c2;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    for (; n >= 3 * CRC_LONG; p += 3 * CRC_LONG, n -= 3 * CRC_LONG) c = crc_hw_lanes(c, p, CRC_LONG, crc_shift_long);
    for (; n >= 3 * CRC_SHORT; p += 3 * CRC_SHORT, n -= 3 * CRC_SHORT) c = crc_hw_lanes(c, p, CRC_SHORT, crc_shift_short);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif


uint32_t crc32c_update(uint32_t crc, const void *data, size_t n) {
#if defined(__x86_64__)
    if (have_hw_crc) return crc_hw(crc, (const uint8_t *)data, n);
#endif
    return crc_sw(crc, (const uint8_t *)data, n);
}

/* crc32c(data, crc=0) -> int, for Python (the blocks file, the tests) */
PyObject *mod_crc32c(PyObject *mod, PyObject *args) {
    (void)mod;
    Py_buffer b;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &b, &crc)) return NULL;
    uint32_t r = crc32c_update(crc ^ 0xFFFFFFFFu, b.buf, (size_t)b.len) ^ 0xFFFFFFFFu;
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(r);
}
