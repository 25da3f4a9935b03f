// ggml's own quantizers (ggml_quantize_chunk) from the command line, for reference data and speed:
//   ggml-harness TYPE ROWS N_PER_ROW in.f32 [imatrix.f32|-] > quantized
//   ggml-harness -d TYPE ROWS N_PER_ROW in.q > floats
//   ggml-harness -b TYPE ROWS N_PER_ROW in.f32 imatrix.f32|- THREADS SECONDS   (prints MB/s of input)
// The -b mode splits the rows into contiguous ranges, one per thread, as llama-quantize's workers
// take chunks of rows, and repeats the whole quantization until SECONDS have passed.
#include "ggml.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct job { int type; const float *x; void *out; long r0, r1, n; const float *im; };

static void *work(void *arg) {
    struct job *j = arg;
    size_t row = ggml_row_size(j->type, j->n);
    ggml_quantize_chunk(j->type, j->x + j->r0 * j->n, (char *)j->out + j->r0 * row, 0, j->r1 - j->r0, j->n, j->im);
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int bench(char **argv) {
    int type = atoi(argv[2]); long rows = atol(argv[3]), n = atol(argv[4]);
    float *x = malloc(rows * n * 4); FILE *f = fopen(argv[5], "rb"); fread(x, 4, rows * n, f); fclose(f);
    float *im = NULL;
    if (strcmp(argv[6], "-")) { im = malloc(n * 4); f = fopen(argv[6], "rb"); fread(im, 4, n, f); fclose(f); }
    int threads = atoi(argv[7]); double seconds = atof(argv[8]);
    ggml_quantize_init(type);
    void *out = malloc(ggml_row_size(type, n) * rows);
    pthread_t tid[64]; struct job jobs[64];
    int reps = 0; double start = now(), elapsed;
    do {
        for (int t = 0; t < threads; ++t) {
            jobs[t] = (struct job){type, x, out, rows * t / threads, rows * (t + 1) / threads, n, im};
            pthread_create(&tid[t], NULL, work, &jobs[t]);
        }
        for (int t = 0; t < threads; ++t) pthread_join(tid[t], NULL);
        ++reps;
        elapsed = now() - start;
    } while (elapsed < seconds);
    printf("%.3f\n", rows * n * 4.0 * reps / elapsed / 1e6);
    return 0;
}

int main(int argc, char **argv) {
    if (!strcmp(argv[1], "-b")) return bench(argv);
    if (!strcmp(argv[1], "-d")) {
        int type = atoi(argv[2]); long rows = atol(argv[3]), n = atol(argv[4]);
        size_t sz = ggml_row_size(type, n) * rows; void *q = malloc(sz);
        FILE *f = fopen(argv[5], "rb"); fread(q, 1, sz, f); fclose(f);
        float *y = malloc(rows*n*4);
        ggml_get_type_traits(type)->to_float(q, y, rows*n);
        fwrite(y, 4, rows*n, stdout); return 0;
    }
    int type = atoi(argv[1]); long rows = atol(argv[2]), n = atol(argv[3]);
    float *x = malloc(rows*n*4); FILE *f = fopen(argv[4], "rb"); fread(x, 4, rows*n, f); fclose(f);
    float *im = NULL;
    if (argc > 5 && strcmp(argv[5], "-")) { im = malloc(n*4); f = fopen(argv[5], "rb"); fread(im, 4, n, f); fclose(f); }
    ggml_quantize_init(type);
    size_t sz = ggml_row_size(type, n) * rows; void *out = malloc(sz);
    ggml_quantize_chunk(type, x, out, 0, rows, n, im);
    fwrite(out, 1, sz, stdout); return 0;
}
