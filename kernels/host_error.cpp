// The error pass of the host build: rows x against the dequantized bytes q of the same rows, in one
// sweep (each row dequantized into a buffer and compared at once, nothing the size of x stored).
// Report figures, not output bytes: the sums may be in any order, so they run in 8 float lanes that
// the compiler can vectorize, flushed to double every 256 values.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" int gq_dequantize(int type_id, const std::uint8_t* q, float* y, std::int64_t nrows, std::int64_t n_per_row);

namespace {

const int kF32 = 0;
const int kLanes = 8;
const int kSpan = 256;

// One row's sums added to sq: [0] x^2, [1] (x - y)^2, [2] w x^2, [3] w (x - y)^2 (lanes in local
// arrays, so that the compiler sees no aliasing and vectorizes), and the largest |x - y|. A NaN
// difference makes sq[1] NaN, which is how the caller learns of it.
template <bool Weighted>
void row_sums(const float* x, const float* y, const float* w, std::int64_t n, double* sq, float* max_abs) {
    float m[kLanes] = {};
    std::int64_t j = 0;
    // float lanes over a span of kSpan values (32 per lane: float's rounding stays near 1e-7 of
    // the sum), flushed to double after each span
    for (; j + kSpan <= n; j += kSpan) {
        float sx[kLanes] = {}, se[kLanes] = {}, wsx[kLanes] = {}, wse[kLanes] = {};
        for (std::int64_t i = j; i < j + kSpan; i += kLanes) {
            for (int k = 0; k < kLanes; ++k) {
                const float xv = x[i + k];
                const float d = xv - y[i + k];
                const float a = std::fabs(d);
                m[k] = a > m[k] ? a : m[k];
                sx[k] += xv * xv;
                se[k] += d * d;
                if (Weighted) {
                    wsx[k] += w[i + k] * (xv * xv);
                    wse[k] += w[i + k] * (d * d);
                }
            }
        }
        for (int k = 0; k < kLanes; ++k) {
            sq[0] += sx[k];
            sq[1] += se[k];
            sq[2] += wsx[k];
            sq[3] += wse[k];
        }
    }
    for (; j < n; ++j) {  // a row's tail shorter than a span, in double
        const float d = x[j] - y[j];
        const float a = std::fabs(d);
        m[0] = a > m[0] ? a : m[0];
        const double xd = x[j], dd = d;
        sq[0] += xd * xd;
        sq[1] += dd * dd;
        if (Weighted) {
            sq[2] += (double)w[j] * (xd * xd);
            sq[3] += (double)w[j] * (dd * dd);
        }
    }
    for (int k = 0; k < kLanes; ++k) *max_abs = m[k] > *max_abs ? m[k] : *max_abs;
}

}  // namespace

extern "C" {

// out[0..4] += sum x^2, sum (x - y)^2, and with w (n_per_row column weights) sum w x^2 and
// sum w (x - y)^2; out[4] = max(out[4], max |x - y|), NaN when a difference is NaN. Returns the
// status of dequantizing (0 when it worked).
int gq_error_sums(int type_id, const std::uint8_t* q, std::int64_t row_bytes, const float* x, const float* w,
                  std::int64_t nrows, std::int64_t n_per_row, double* out) {
    std::vector<float> y(static_cast<std::size_t>(n_per_row));
    double sq[4] = {};
    float max_abs = 0.0f;
    for (std::int64_t r = 0; r < nrows; ++r) {
        const std::uint8_t* qr = q + r * row_bytes;
        if (type_id == kF32) {
            std::memcpy(y.data(), qr, static_cast<std::size_t>(n_per_row) * sizeof(float));
        } else {
            const int status = gq_dequantize(type_id, qr, y.data(), 1, n_per_row);
            if (status != 0) return status;
        }
        if (w) {
            row_sums<true>(x + r * n_per_row, y.data(), w, n_per_row, sq, &max_abs);
        } else {
            row_sums<false>(x + r * n_per_row, y.data(), w, n_per_row, sq, &max_abs);
        }
    }
    for (int k = 0; k < 4; ++k) out[k] += sq[k];
    // an Inf difference also gives Inf here, not NaN; a NaN one gives NaN in sq[1]
    out[4] = std::isnan(sq[1]) || std::isnan(out[4]) ? NAN : (max_abs > out[4] ? max_abs : out[4]);
    return 0;
}

}  // extern "C"
