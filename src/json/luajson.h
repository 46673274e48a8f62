/*
 * luajson.h -- Lua values <-> JSON text for the wix module, with the one
 * naming rule between Lua and the wire:
 *
 *   Lua snake_case keys  <->  wire lowerCamelCase keys
 *   (catalog_product_id <-> catalogProductId; each segment of a dotted
 *   filter key is converted; keys starting with '$' are left alone; the
 *   string value of a sort "field_name" is converted like a key).
 *
 * Encoding: a table whose keys are exactly 1..n is an array; an empty table
 * is an object unless its key is one of the wire's list fields (products,
 * sort, fields, fieldsets, $in, $hasSome, $hasAll) or it carries the
 * wix.array marker metatable. JSON null decodes to the wix.null sentinel
 * (a light userdata) inside arrays and is dropped from objects.
 */
#ifndef WIXR_LUAJSON_H
#define WIXR_LUAJSON_H

#include <lua.h>
#include <stddef.h>

#include "../util/buf.h"

#define LUAJSON_MAX_DEPTH 64
#define LUAJSON_ARRAY_MT "wix.array"

#define LUAJSON_NO_MEMORY "not enough memory"  /* err when encoding ran out of memory */
#define LUAJSON_CAMEL 1   /* the wire's key names (snake_case -> lowerCamelCase) */
#define LUAJSON_SORTED 2  /* with LUAJSON_CAMEL: object keys sorted too (without it they always are) */

/* Work the encoder does is charged through this function when it is set
 * (the hook sandbox sets it: sandbox_charge, which raises once a run's limit
 * has struck); the encoder calls it every LUAJSON_CHARGE_EVERY values it
 * visits, so a table that holds the same sub-table many times over, which
 * is walked once per reference, cannot walk for minutes inside one C call. */
#define LUAJSON_CHARGE_EVERY 1024
extern void (*luajson_charge)(lua_State *L, double units);

/* Appends the value at idx to b: camel is 0 (Lua's names, keys sorted, so the
 * same data is the same text) or LUAJSON_CAMEL [| LUAJSON_SORTED] (the wire).
 * Never raises (it encodes in a protected call): returns 0, or -1 with a
 * message in err (LUAJSON_NO_MEMORY when memory ran out). It stops at the
 * first failure: a value that cannot be sent, b over its cap, a limit. */
int luajson_encode(lua_State *L, int idx, buf_t *b, int camel, char *err, size_t errlen);
/* After a failed luajson_encode (its buffers freed): raises err, prefixed by
 * what; a memory failure is raised as Lua's own "not enough memory" (so the
 * run ends as a memory failure, not as an error of the script's). */
int luajson_raise(lua_State *L, const char *what, const char *err);
/* Pushes the decoded value; returns 0, or -1 (nothing pushed) with err set. */
int luajson_decode(lua_State *L, const char *text, size_t len, int snake, char *err, size_t errlen);

struct json_value;
/* Pushes a parsed value as Lua values, unprotected: a memory error is raised
 * in L (call it where raising is safe, e.g. inside a task's resume, with the
 * document owned by something that outlives the raise). */
void luajson_push(lua_State *L, const struct json_value *v, int snake);

/* Key conversions; return the length written (out is NUL-terminated). */
size_t luajson_snake_to_camel(const char *in, size_t n, char *out, size_t outlen);
size_t luajson_camel_to_snake(const char *in, size_t n, char *out, size_t outlen);

#endif
