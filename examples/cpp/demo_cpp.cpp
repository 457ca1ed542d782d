// demo_cpp.cpp - a small C++ library with a C interface (extern "C"),
// used by the dllpool examples. The functions use the C++ standard library
// internally; the 32-bit build links libstdc++ and libgcc statically so the
// 32-bit worker needs no libstdc++:i386 at run time.
#include <cstddef>
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

}  // extern "C"
