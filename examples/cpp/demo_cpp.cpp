// demo_cpp.cpp - a small C++ library with a C interface (extern "C"),
// used by the dllpool examples. The functions use the C++ standard library
// internally; the 32-bit build links libstdc++ and libgcc statically so the
// 32-bit worker needs no libstdc++:i386 at run time.
#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdlib>
#include <numeric>
#include <vector>

#ifdef _WIN32
#define DEMO_EXPORT __declspec(dllexport)
#else
#define DEMO_EXPORT __attribute__((visibility("default")))
#endif

namespace {

// Sum of the numbers, computed with std::accumulate over a std::vector copy.
double sum_of(const double *values, int n) {
    if (values == nullptr || n <= 0) {
        return 0.0;
    }
    std::vector<double> data(values, values + n);
    return std::accumulate(data.begin(), data.end(), 0.0);
}

}  // namespace

extern "C" {

DEMO_EXPORT int cpp_add(int a, int b) {
    std::vector<int> terms{a, b};
    return std::accumulate(terms.begin(), terms.end(), 0);
}

// Arithmetic mean of n doubles; 0.0 when n <= 0.
DEMO_EXPORT double cpp_mean(const double *values, int n) {
    if (values == nullptr || n <= 0) {
        return 0.0;
    }
    return sum_of(values, n) / static_cast<double>(n);
}

// 4 in a 32-bit process, 8 in a 64-bit process.
DEMO_EXPORT int cpp_pointer_size(void) { return static_cast<int>(sizeof(void *)); }

// Multiplies x[0..n-1] by k in place.
DEMO_EXPORT void cpp_scale(double *x, int n, double k) {
    if (x == nullptr || n <= 0) {
        return;
    }
    std::transform(x, x + n, x, [k](double v) { return v * k; });
}

// An output array: out[i] = i * i for i in 0..n-1.
DEMO_EXPORT void cpp_fill_squares(double *out, int n) {
    for (int i = 0; out != nullptr && i < n; ++i) {
        out[i] = static_cast<double>(i) * i;
    }
}

// Out-parameters through std::div (truncated toward zero). Returns 0, or -1
// (q and r untouched) when b is 0 or the quotient overflows (INT_MIN / -1).
DEMO_EXPORT int cpp_divmod(int a, int b, int *q, int *r) {
    if (q == nullptr || r == nullptr || b == 0 || (a == INT_MIN && b == -1)) {
        return -1;
    }
    const std::div_t result = std::div(a, b);
    *q = result.quot;
    *r = result.rem;
    return 0;
}

// Text into the caller's buffer: the ASCII upper-case copy of s, cut to
// size - 1 characters and NUL-terminated. Returns the length written
// (0 when out cannot hold even the NUL).
DEMO_EXPORT int cpp_upper(const char *s, char *out, int size) {
    if (out == nullptr || size <= 0) {
        return 0;
    }
    const char *end = s == nullptr ? s : std::find(s, s + (size - 1), '\0');  // reads no further than it copies
    char *last = std::transform(s, end, out, [](char c) -> char {
        return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c;
    });
    *last = '\0';
    return static_cast<int>(last - out);
}

}  // extern "C"
