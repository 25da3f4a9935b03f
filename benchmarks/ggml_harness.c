// reference: q TYPE ROWS N_PER_ROW in.f32 [imatrix.f32|-] > quantized ; q -d TYPE ROWS N_PER_ROW in.q > floats
#include "ggml.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
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
