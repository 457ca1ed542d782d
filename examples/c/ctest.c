/*
 * ctest.c - the ctypes examples of the teaching notebook dllpool grew from,
 * rewritten as a small C99 library: a struct by value and by pointer, an
 * array with its length, text edited in place, a 2-D text output and a
 * fixed-width 2-D matrix product.
 *
 * config/pool.toml declares all six functions from these prototypes (the
 * "notebook" service), so none needs wrapper code.  Every function keeps
 * within the sizes its prototype states, whatever the caller passes.
 */
#include <ctype.h>
#include <stddef.h>

#ifdef _WIN32
#define CTEST_EXPORT __declspec(dllexport)
#else
#define CTEST_EXPORT __attribute__((visibility("default")))
#endif

#define TOKEN_SIZE 20 /* a row of tokenize's output, the NUL included */
#define MAX_TOKENS 20 /* rows the caller's char t[20][20] holds */
#define MAX_COLUMNS 100 /* the fixed inner extent of mult's matrices */

struct Complex {
    double re, im;
};

/* a + b, passed and returned by value. */
CTEST_EXPORT struct Complex add(struct Complex a, struct Complex b) {
    struct Complex sum;
    sum.re = a.re + b.re;
    sum.im = a.im + b.im;
    return sum;
}

/* Exchanges *a and *b through their pointers. */
CTEST_EXPORT void swap(struct Complex *a, struct Complex *b) {
    struct Complex t;
    if (a == NULL || b == NULL) {
        return;
    }
    t = *a;
    *a = *b;
    *b = t;
}

/* f[0] + ... + f[n-1]; 0 when n <= 0. */
CTEST_EXPORT double sum(double f[], int n) {
    double total = 0.0;
    int i;
    for (i = 0; i < n; ++i) {
        total += f[i];
    }
    return total;
}

/* Upper-cases, in place, each letter that starts the text or follows white space. */
CTEST_EXPORT void titlecase(char *s) {
    int word_start = 1;
    if (s == NULL) {
        return;
    }
    for (; *s != '\0'; ++s) {
        unsigned char c = (unsigned char)*s; /* <ctype.h> needs a non-negative char */
        if (word_start && isalpha(c)) {
            *s = (char)toupper(c);
        }
        word_start = isspace(c) != 0;
    }
}

/*
 * Splits str at each sep into the rows of t, like strtok: runs of separators
 * count as one and yield no empty token.  A token longer than TOKEN_SIZE - 1
 * characters is cut to that length; each row is NUL-terminated.  Stops after
 * MAX_TOKENS tokens, so a char t[20][20] is never overrun.  Returns how many
 * rows were written.
 */
CTEST_EXPORT int tokenize(char sep, const char *str, char t[][TOKEN_SIZE]) {
    int count = 0;
    if (str == NULL || t == NULL) {
        return 0;
    }
    while (count < MAX_TOKENS) {
        int length = 0;
        while (*str == sep && sep != '\0') {
            ++str;
        }
        if (*str == '\0') {
            break;
        }
        for (; *str != '\0' && *str != sep; ++str) {
            if (length < TOKEN_SIZE - 1) {
                t[count][length++] = *str;
            }
        }
        t[count++][length] = '\0';
    }
    return count;
}

/*
 * c = a * b, where a is n x r and b is r x m (c: n x m), each stored in rows
 * of MAX_COLUMNS doubles.  Does nothing when a dimension is negative or a
 * row would not fit.
 */
CTEST_EXPORT void mult(double a[][MAX_COLUMNS], double b[][MAX_COLUMNS], double c[][MAX_COLUMNS], int n, int r,
                       int m) {
    int i, j, k;
    if (n < 0 || r < 0 || m < 0 || r > MAX_COLUMNS || m > MAX_COLUMNS) {
        return;
    }
    for (i = 0; i < n; ++i) {
        for (j = 0; j < m; ++j) {
            double cell = 0.0;
            for (k = 0; k < r; ++k) {
                cell += a[i][k] * b[k][j];
            }
            c[i][j] = cell;
        }
    }
}
