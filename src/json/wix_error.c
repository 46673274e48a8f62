#include "wix_error.h"

#include <stdio.h>
#include <string.h>

#include "json.h"

void wix_error_body(buf_t *b, const char *code, const char *fmt, va_list ap)
{
    char message[512];
    vsnprintf(message, sizeof message, fmt, ap);
    json_writer w;
    jw_init(&w, b);
    jw_obj(&w);
    jw_kstr(&w, "message", message);
    jw_key(&w, "details");
    jw_obj(&w);
    jw_key(&w, "applicationError");
    jw_obj(&w);
    jw_kstr(&w, "code", code);
    jw_kstr(&w, "description", message);
    jw_key(&w, "data");
    jw_obj(&w);
    jw_obj_end(&w);
    jw_obj_end(&w);
    jw_obj_end(&w);
    jw_obj_end(&w);
}

void wix_violation_item(buf_t *b, const char *field, const char *rule, const char *fmt, va_list ap)
{
    char description[512];
    vsnprintf(description, sizeof description, fmt, ap);
    json_writer w;
    jw_init(&w, b);
    jw_obj(&w);
    jw_kstr(&w, "field", field);
    jw_kstr(&w, "description", description);
    jw_kstr(&w, "violatedRule", rule);
    jw_kstr(&w, "ruleName", "VALIDATION_ERROR");
    jw_key(&w, "data");
    jw_obj(&w);
    jw_obj_end(&w);
    jw_obj_end(&w);
}

void wix_validation_body(buf_t *b, const char *first_field, int more, const char *violations, size_t len)
{
    char msg[256];
    /* The message names the first field, so a one-line log says where. */
    snprintf(msg, sizeof msg, "INVALID_ARGUMENT: %.150s%s", first_field, more ? " (and other fields)" : "");
    json_writer w;
    jw_init(&w, b);
    jw_obj(&w);
    jw_kstr(&w, "message", msg);
    jw_key(&w, "details");
    jw_obj(&w);
    jw_key(&w, "validationError");
    jw_obj(&w);
    jw_key(&w, "fieldViolations");
    jw_raw(&w, "[", 1);
    buf_add(b, violations, len);
    buf_addc(b, ']');
    jw_obj_end(&w);
    jw_obj_end(&w);
    jw_obj_end(&w);
}
