/* Compiled Rademacher perturbation for CPUs: w += s * z in one loop, z never written to memory.
 *
 * Why C (docs/performance.md): rng.py's numpy/torch path runs at memory speed when
 * warm, but a ZO step's second and third passes follow a forward that has streamed the model through
 * the caches, and then each of its few dozen library calls runs cold (~+0.4 ms a pass, whatever its
 * size). This loop is a few KiB of code and touches nothing but the weights and a 1 KiB scratch.
 * numba compiled the same loop but cost ~120 MiB of resident LLVM per client process, against a
 * memory-poor client's whole point; this extension costs ~20 KiB.
 *
 * The bits are rng.py's: element i of stream (k0, k1) is bit i % 32 of
 * lowbias32(lowbias32((i / 32) * G + k0) ^ k1), +s for a clear bit and -s for a set one, added in
 * float32 with one rounding, as torch's `w.add_(z, alpha=s)` does (s * z is exact for z = +-1).
 * Built without -ffast-math so that the add is plain IEEE; tests/test_rng_native.py checks the bits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
/* One binary for every x86-64 machine: the loader picks the widest vector unit at load time. */
#define ZORBA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ZORBA_CLONES
#endif

#define WORDS_PER_BLOCK 256 /* 1 KiB of hashes, then 8192 adds that read them from L1 */

static inline uint32_t lowbias32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

static inline uint32_t word_hash(uint64_t word, uint32_t k0, uint32_t k1) {
    return lowbias32(lowbias32((uint32_t)word * 0x9E3779B9u + k0) ^ k1);
}

/* A round's replay on one tensor: pairs (key, scale) in order, each element rounded to float32
 * after every add exactly as separate passes would, but block by block, so that a block of the
 * weights stays in L1 across all pairs and memory is read and written once, not once a pair. */
ZORBA_CLONES
static void add_sequence(float *w, int64_t n, uint64_t first_word, const uint64_t *keys, const float *scales,
                         int64_t pairs) {
    uint32_t hashes[WORDS_PER_BLOCK];
    const int64_t full = n / 32;
    for (int64_t w0 = 0; w0 < full; w0 += WORDS_PER_BLOCK) {
        const int64_t m = full - w0 < WORDS_PER_BLOCK ? full - w0 : WORDS_PER_BLOCK;
        for (int64_t p = 0; p < pairs; p++) {
            const uint32_t k0 = (uint32_t)keys[p], k1 = (uint32_t)(keys[p] >> 32);
            const float s = scales[p];
            for (int64_t i = 0; i < m; i++) hashes[i] = word_hash(first_word + w0 + i, k0, k1);
            for (int64_t i = 0; i < m; i++) {
                const uint32_t h = hashes[i];
                float *row = w + (w0 + i) * 32;
                for (int j = 0; j < 32; j++) row[j] += ((h >> j) & 1u) ? -s : s;
            }
        }
    }
    if (full * 32 < n) {
        float *row = w + full * 32;
        for (int64_t p = 0; p < pairs; p++) {
            const uint32_t h = word_hash(first_word + full, (uint32_t)keys[p], (uint32_t)(keys[p] >> 32));
            for (int64_t j = 0; j < n - full * 32; j++) row[j] += ((h >> j) & 1u) ? -scales[p] : scales[p];
        }
    }
}

/* add_streams(items): items is a sequence of (address, numel, first_word, key, scale); each adds
 * scale * z(key)[32 * first_word:][:numel] to the contiguous float32 buffer at that address. The
 * caller (rng_native.py) owns the checks: CPU, contiguous, float32, alive for the call. */
static PyObject *add_streams(PyObject *self, PyObject *items) {
    PyObject *seq = PySequence_Fast(items, "add_streams takes a sequence of tuples");
    if (seq == NULL) return NULL;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t k = 0; k < count; k++) {
        unsigned long long address, first_word, key;
        long long numel;
        double scale;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "KLKKd", &address, &numel, &first_word, &key, &scale)) {
            Py_DECREF(seq);
            return NULL;
        }
        const uint64_t key64 = key;
        const float s = (float)scale; /* torch rounds alpha to the tensor's dtype the same way */
        Py_BEGIN_ALLOW_THREADS
        add_sequence((float *)(uintptr_t)address, numel, first_word, &key64, &s, 1); /* a pass: one pair */
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

/* add_sequences(items): items is a sequence of (address, numel, first_word, keys, scales) with keys
 * the pairs' uint64 keys and scales their float32 scales (native-endian bytes, same count), in
 * replay order; zero scales already dropped by the caller (w + 0 * z can turn -0.0 into +0.0). */
static PyObject *add_sequences(PyObject *self, PyObject *items) {
    PyObject *seq = PySequence_Fast(items, "add_sequences takes a sequence of tuples");
    if (seq == NULL) return NULL;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t k = 0; k < count; k++) {
        unsigned long long address, first_word;
        long long numel;
        Py_buffer keys, scales;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "KLKy*y*", &address, &numel, &first_word, &keys,
                              &scales)) {
            Py_DECREF(seq);
            return NULL;
        }
        const int64_t pairs = keys.len / 8;
        if (keys.len % 8 || scales.len != pairs * 4) {
            PyBuffer_Release(&keys);
            PyBuffer_Release(&scales);
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "add_sequences: keys are 8 bytes and scales 4 bytes a pair");
            return NULL;
        }
        Py_BEGIN_ALLOW_THREADS
        add_sequence((float *)(uintptr_t)address, numel, first_word, (const uint64_t *)keys.buf,
                     (const float *)scales.buf, pairs);
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&keys);
        PyBuffer_Release(&scales);
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"add_streams", add_streams, METH_O, "Add scale * z(key) to float32 buffers, stream by stream."},
    {"add_sequences", add_sequences, METH_O, "Replay (key, scale) pairs in order on float32 buffers, one pass each."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rng_native", NULL, -1, methods};

/* Bumped with every change to what Python sees: an editable install keeps an old build until
 * `pip install -e .` runs again, and rng_native.py ignores a build of another version. */
#define ZORBA_NATIVE_VERSION 3

PyMODINIT_FUNC PyInit__rng_native(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "VERSION", ZORBA_NATIVE_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
