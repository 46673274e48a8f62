/*
 * check.h -- a minimal assertion harness for the C unit tests.
 * Each failed check prints file:line and the expression; the program ends
 * with "N passed, N failed" and a non-zero exit when anything failed.
 */
#ifndef WIXR_CHECK_H
#define WIXR_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (cond) {                                                                  \
            check_passed++;                                                          \
        } else {                                                                     \
            check_failed++;                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

#define CHECK_STR(a, b)                                                                                   \
    do {                                                                                                  \
        const char *a_ = (a), *b_ = (b);                                                                  \
        if (a_ && b_ && strcmp(a_, b_) == 0) {                                                            \
            check_passed++;                                                                               \
        } else {                                                                                          \
            check_failed++;                                                                               \
            fprintf(stderr, "%s:%d: expected \"%s\", got \"%s\"\n", __FILE__, __LINE__, b_ ? b_ : "(null)", \
                    a_ ? a_ : "(null)");                                                                  \
        }                                                                                                 \
    } while (0)

#define CHECK_INT(a, b)                                                                                       \
    do {                                                                                                      \
        long long a_ = (long long)(a), b_ = (long long)(b);                                                   \
        if (a_ == b_) {                                                                                       \
            check_passed++;                                                                                   \
        } else {                                                                                              \
            check_failed++;                                                                                   \
            fprintf(stderr, "%s:%d: %s: expected %lld, got %lld\n", __FILE__, __LINE__, #a, b_, a_);          \
        }                                                                                                     \
    } while (0)

static int check_report(void)
{
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#endif
