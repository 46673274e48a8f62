/*
 * wix_error -- the body of a Wix error answer (resellers-api.md §4.0), for
 * every HTTP front of wixr: the emulator and `wixr serve`.
 *
 *   {"message": M, "details": {"applicationError":
 *       {"code": CODE, "description": M, "data": {}}}}
 *   {"message": "INVALID_ARGUMENT: FIELD", "details": {"validationError":
 *       {"fieldViolations": [{"field", "description", "violatedRule",
 *                             "ruleName": "VALIDATION_ERROR", "data": {}}]}}}
 */
#ifndef WIXR_WIX_ERROR_H
#define WIXR_WIX_ERROR_H

#include <stdarg.h>

#include "../util/buf.h"

/* Appends an applicationError body, its message made from fmt: a rule said no. */
void wix_error_body(buf_t *b, const char *code, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));

/* Appends one fieldViolation object (no separator) to a list being built. */
void wix_violation_item(buf_t *b, const char *field, const char *rule, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

/* Appends a validationError body around violations, the items already joined
 * with commas; first_field names the first of them, and more says there are
 * others, for the one-line message. */
void wix_validation_body(buf_t *b, const char *first_field, int more, const char *violations, size_t len);

#endif
