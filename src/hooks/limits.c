/*
 * limits.c -- what a hook's state and runs may use: the allocator with an
 * exact cap, the instruction budget and the deadline (a count hook that,
 * once tripped, fires on every instruction), and the library calls that loop
 * in C, where the count hook never runs: their work charged to the budget
 * (table.move, insert, remove, sort, string.rep, concat, unpack) or bounded
 * before they start (the pattern functions). See sandbox.h.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <lauxlib.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../json/json.h"
#include "sandbox_internal.h"

/* ---- memory: an allocator with an exact cap per hook state ---- */

void *limits_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    hook_rt *k = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        pool_free(&k->pool, ptr, old);
        k->mem -= old;
        return NULL;
    }
    if (nsize > old && k->mem + (nsize - old) > k->mem_limit)
        return NULL; /* Lua raises "not enough memory" in the running code */
    if (k->alloc_fail_at && nsize > old && ++k->allocs >= k->alloc_fail_at)
        return NULL; /* tests: an allocation point refused, as at the cap */
    void *p = pool_realloc(&k->pool, ptr, old, nsize);
    if (!p)
        return NULL;
    k->mem = k->mem - old + nsize;
    if (k->mem > k->mem_peak)
        k->mem_peak = k->mem;
    return p;
}

/* What a JSON text parses into (json_value nodes, C memory outside the cap)
 * is bounded by its commas and brackets: a document that could not fit in
 * the hook's free memory is refused before it is parsed. */
int sandbox_json_fits(lua_State *L, const char *s, size_t len)
{
    wixr_ctx *c = ctx_of(L);
    hook_rt *k = c ? c->hook : NULL;
    if (!k)
        return 1;
    double nodes = 1;
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (in_string) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_string = 0;
        } else if (ch == '"') {
            in_string = 1;
        } else if (ch == ',' || ch == '[' || ch == '{') {
            nodes++;
        }
    }
    size_t room = k->mem_limit > k->mem ? k->mem_limit - k->mem : 0;
    return nodes * (double)sizeof(json_value) + (double)len <= (double)room;
}

/* ---- instructions and wall time ---- */

hook_run *sandbox_current_run(lua_State *L)
{
    wixr_ctx *c = ctx_of(L);
    if (!c || !c->hook)
        return NULL;
    /* The run is the one whose task the scheduler is resuming: a coroutine
     * made in another run, or while the script loaded, counts for this one. */
    sched_task *t = sched_current(c->host->sched);
    if (t) {
        hook_run *r = ctx_of(sched_task_thread(t))->run;
        return r && r->hook == c->hook ? r : NULL;
    }
    /* No task runs: the script loading, or an error value being made text.
     * Script code then still has a run whose limits it answers to (the
     * coroutines it makes carry the hook's context, not a run's). */
    return c->run ? c->run : c->hook->idle_run;
}

/* Counts n instructions (or work of a C call, see sandbox_charge) against the
 * run's budget and checks its deadline; 1 when a limit has struck. */
static int over_limit(hook_run *r, long long n)
{
    if (!r->tripped) {
        r->instructions += n;
        if (r->instructions > r->hook->def->limits.instructions)
            snprintf(r->trip, sizeof r->trip, "instruction limit exceeded (%lld)", r->hook->def->limits.instructions);
        else if (sched_now_ms() > r->deadline_ms)
            snprintf(r->trip, sizeof r->trip, "wall time limit exceeded (%ld ms)", r->hook->def->limits.wall_ms);
        else
            return 0;
        r->tripped = 1;
    }
    return 1;
}

void limits_count_hook(lua_State *L, lua_Debug *ar)
{
    sched_progress++; /* a run in Lua is progress (a worker stuck in C makes none) */
    hook_run *r = sandbox_current_run(L);
    if (!r || !over_limit(r, LIMITS_HOOK_EVERY))
        return;
    /* From now on every instruction raises: a pcall in the script cannot swallow it. */
    lua_sethook(L, limits_count_hook, LUA_MASKCOUNT, 1);
    if (!r->trip_placed) {
        /* the message says where the limit struck; later raises repeat it */
        r->trip_placed = 1;
        if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0) {
            char msg[sizeof r->trip];
            snprintf(msg, sizeof msg, "%.200s:%d: %.90s", ar->short_src, ar->currentline, r->trip);
            snprintf(r->trip, sizeof r->trip, "%s", msg);
        }
    }
    lua_pushstring(L, r->trip);
    lua_error(L);
}

/* The count hook never runs inside a C function: a library call that loops
 * in C (over a range of a table, a repetition) escapes both limits. Such a
 * call charges its work to the instruction budget before it starts, and does
 * not start past the deadline; once a limit has struck it raises, as the
 * hook does. */
void sandbox_charge(lua_State *L, double units)
{
    hook_run *r = sandbox_current_run(L);
    if (!r || !over_limit(r, units < 0 ? 0 : units > 1e15 ? (long long)1e15 : (long long)units))
        return;
    lua_sethook(L, limits_count_hook, LUA_MASKCOUNT, 1);
    lua_Debug ar;
    if (!r->trip_placed) {
        r->trip_placed = 1;
        /* the nearest script line: the charge may come from C called by C
         * (the JSON encoder inside its protected call) */
        for (int level = 1; lua_getstack(L, level, &ar); level++) {
            if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
                char msg[sizeof r->trip];
                snprintf(msg, sizeof msg, "%.200s:%d: %.90s", ar.short_src, ar.currentline, r->trip);
                snprintf(r->trip, sizeof r->trip, "%s", msg);
                break;
            }
        }
    }
    lua_pushstring(L, r->trip);
    lua_error(L);
}

void sandbox_adopt_thread(lua_State *parent, lua_State *child)
{
    wixr_ctx *c = ctx_of(parent);
    if (c && c->hook) {
        /* The task works for the run going on, wherever it was started from:
         * a coroutine of the script carries the hook's context (no run), and
         * a task left with it would run outside every limit and permission. */
        hook_run *r = sandbox_current_run(parent);
        *(wixr_ctx **)lua_getextraspace(child) = r ? &r->ctx : c;
        lua_sethook(child, limits_count_hook, LUA_MASKCOUNT, r && r->tripped ? 1 : LIMITS_HOOK_EVERY);
        return;
    }
    *(wixr_ctx **)lua_getextraspace(child) = c;
    lua_Hook h = lua_gethook(parent);
    if (h)
        lua_sethook(child, h, lua_gethookmask(parent), lua_gethookcount(parent));
}

/* Patterns: Lua's matcher backtracks inside C, where no limit can stop it
 * (the count hook only runs between Lua instructions). Its work on a subject
 * of n bytes is bounded by the product of the choices of the pattern's items:
 * for a repeated single-character class ('a*', '.-', '%d+', '[%w_]*') one
 * more than the longest run of subject characters it matches, two for an
 * optional one ('x?'), a scan of the subject for a balance ('%b()') or a
 * back-reference ('%1'); times n + 1 start positions unless the pattern is
 * anchored with '^' (find, match and gsub honour it; gmatch does not). A
 * repetition that ends the pattern never backtracks (nothing after it can
 * fail) and counts once. A call whose bound is over 1e9 steps (seconds of C)
 * is refused. Every path also compares the pattern's single (unrepeated)
 * items one by one: their number multiplies the bound, so a long literal
 * pattern over a long subject counts too. The bound is an upper one: it refuses '.-' before a character
 * over a subject of more than about 30 kB, which a character class avoids
 * ('[^\n]*\n' rather than '.-\n'). */
#define PATTERN_MAX_STEPS 1e9
#define PLAIN_BYTES_PER_STEP 32.0

static size_t set_end(const char *p, size_t plen, size_t i) /* p[i] == '[' */
{
    i++;
    if (i < plen && p[i] == '^')
        i++;
    do { /* as lstrlib's classEnd: the first character may be a ']' */
        if (i >= plen)
            return plen;
        if (p[i++] == '%' && i < plen)
            i++;
    } while (i < plen && p[i] != ']');
    return i < plen ? i + 1 : plen;
}

/* As lstrlib's match_class, matchbracketclass and singlematch. */
static int class_match(int c, int cl)
{
    int res;
    switch (tolower(cl)) {
    case 'a': res = isalpha(c); break;
    case 'c': res = iscntrl(c); break;
    case 'd': res = isdigit(c); break;
    case 'g': res = isgraph(c); break;
    case 'l': res = islower(c); break;
    case 'p': res = ispunct(c); break;
    case 's': res = isspace(c); break;
    case 'u': res = isupper(c); break;
    case 'w': res = isalnum(c); break;
    case 'x': res = isxdigit(c); break;
    default: return cl == c;
    }
    return isupper(cl) ? !res : res != 0;
}

static int set_match(int c, const char *p, const char *ec) /* p at '[', ec at its ']' */
{
    int sig = 1;
    if (p[1] == '^') {
        sig = 0;
        p++;
    }
    while (++p < ec) {
        if (*p == '%' && p + 1 < ec) {
            p++;
            if (class_match(c, (unsigned char)*p))
                return sig;
        } else if (p + 2 < ec && p[1] == '-') {
            p += 2;
            if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p)
                return sig;
        } else if ((unsigned char)*p == c) {
            return sig;
        }
    }
    return !sig;
}

static int single_match(int c, const char *p, const char *ep) /* the class is p..ep */
{
    switch (*p) {
    case '.': return 1;
    case '%': return class_match(c, (unsigned char)p[1]);
    case '[': return set_match(c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

/* The longest run of subject characters the class p..ep matches. */
static size_t longest_run(const char *s, size_t n, const char *p, const char *ep)
{
    if (*p == '.')
        return n;
    size_t best = 0, run = 0;
    for (size_t i = 0; i < n; i++) {
        run = single_match((unsigned char)s[i], p, ep) ? run + 1 : 0;
        if (run > best)
            best = run;
    }
    return best;
}

/* With s NULL every repetition counts n + 1 choices (a quick first bound);
 * with the subject, the longest run its class matches. */
static double pattern_steps(const char *p, size_t plen, const char *s, size_t n, int honours_anchor)
{
    double len = (double)n + 1, steps = 1, single = 0;
    size_t i = 0;
    int anchored = honours_anchor && plen && p[0] == '^';
    if (anchored)
        i = 1;
    while (i < plen) {
        char c = p[i];
        size_t end;
        if (c == '(' || c == ')') {
            i++;
            continue;
        }
        if (c == '%' && i + 1 < plen) {
            char d = p[i + 1];
            if (d == 'b') { /* %bxy: a scan of the subject */
                steps *= len;
                i += 4;
                continue;
            }
            if (d == 'f') { /* %f[set]: one test */
                i += 2;
                if (i < plen && p[i] == '[')
                    i = set_end(p, plen, i);
                continue;
            }
            if (d >= '0' && d <= '9') { /* a back-reference: a comparison over the subject */
                steps *= len;
                i += 2;
                continue;
            }
            end = i + 2;
        } else if (c == '[') {
            end = set_end(p, plen, i);
        } else {
            end = i + 1;
        }
        if (end < plen && (p[end] == '*' || p[end] == '+' || p[end] == '-')) {
            size_t after = end + 1;
            while (after < plen && p[after] == ')')
                after++;
            if (after < plen) /* something after it can fail: it backtracks */
                steps *= s ? (double)longest_run(s, n, p + i, p + end) + 1 : len;
            end++;
        } else if (end < plen && p[end] == '?') {
            steps *= 2;
            end++;
        } else {
            single++; /* one comparison on every path that gets here */
        }
        i = end;
    }
    /* Each path through the choices also compares the pattern's single
     * items, one by one: a long literal pattern ('aaaa...b') costs its
     * length at every start position. */
    if (single > 1)
        steps *= single;
    return anchored ? steps : steps * len;
}

static int pattern_too_costly(const char *p, size_t plen, const char *s, size_t n, int honours_anchor)
{
    return pattern_steps(p, plen, NULL, n, honours_anchor) > PATTERN_MAX_STEPS &&
           pattern_steps(p, plen, s, n, honours_anchor) > PATTERN_MAX_STEPS;
}

/* "src:line: ..." */
static int has_position(const char *m)
{
    const char *c = strchr(m, ':');
    if (!c || c == m || c[1] < '0' || c[1] > '9')
        return 0;
    for (c++; *c >= '0' && *c <= '9'; c++)
        ;
    return *c == ':';
}

/* Calls the library function in upvalue 1 with the arguments as they are.
 * An error it raises itself gets the script's position, as when the script
 * calls it directly (luaL_error places it at the caller: here, this C
 * function, which has none). A memory error is passed on as its message. */
static int call_placed(lua_State *L);

static int call_original(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    return call_placed(L);
}

/* Calls the function at 1 with the values above it, as call_original. */
static int call_placed(lua_State *L)
{
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (st == LUA_OK)
        return lua_gettop(L);
    hook_run *r = sandbox_current_run(L);
    if (st == LUA_ERRRUN && !(r && r->tripped) && lua_type(L, -1) == LUA_TSTRING &&
        !has_position(lua_tostring(L, -1))) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

static int guarded(lua_State *L, int plain_arg, int honours_anchor)
{
    size_t n, plen;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *p = luaL_checklstring(L, 2, &plen);
    int plain = plain_arg && lua_toboolean(L, plain_arg);
    sandbox_charge(L, 0);
    /* a plain find compares the text at each start position (memcmp: a step
     * per PLAIN_BYTES_PER_STEP bytes) */
    if (plain && plen > 1 && ((double)n + 1) * (double)plen / PLAIN_BYTES_PER_STEP > PATTERN_MAX_STEPS)
        return luaL_error(L, "pattern too costly for a %d-byte string (a %d-byte plain text at every position); "
                             "split the work", (int)n, (int)plen);
    if (!plain && pattern_too_costly(p, plen, s, n, honours_anchor))
        return luaL_error(L, "pattern too costly for a %d-byte string (repetitions that can backtrack); split "
                             "the work, anchor the pattern or use plain find", (int)n);
    return call_original(L);
}

int limits_find(lua_State *L) { return guarded(L, 4, 1); }
int limits_match(lua_State *L) { return guarded(L, 0, 1); }
int limits_gmatch(lua_State *L) { return guarded(L, 0, 0); }

/* string.rep: Lua's copies an empty string n times, one empty memcpy at a
 * time (string.rep("", math.maxinteger) never ends). */
int limits_rep(lua_State *L)
{
    size_t l, lsep;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (n > 0 && l + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    sandbox_charge(L, 0);
    return call_original(L);
}

/* table.move(a1, f, e, t [, a2]): e - f + 1 elements, charged. */
int limits_tmove(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
    sandbox_charge(L, e >= f ? (double)e - (double)f + 1 : 0);
    return call_original(L);
}

/* The length of the table at 1, asked once: its __len could answer another
 * length to a second asking. */
static lua_Integer table_len(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    return luaL_len(L, 1);
}

/* table.insert and table.remove as Lua 5.4's, with the elements they shift
 * charged (a __len answering 1e15 made them loop in C for ever). */
int limits_tinsert(lua_State *L)
{
    lua_Integer e = table_len(L);
    e = (lua_Integer)((lua_Unsigned)e + 1u); /* first empty element */
    lua_Integer pos;
    switch (lua_gettop(L)) {
    case 2:
        pos = e;
        break;
    case 3:
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
        sandbox_charge(L, (double)e - (double)pos);
        for (lua_Integer i = e; i > pos; i--) {
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
        }
        break;
    default:
        return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    return 0;
}

int limits_tremove(lua_State *L)
{
    lua_Integer size = table_len(L);
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size)
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 2, "position out of bounds");
    lua_geti(L, 1, pos);
    sandbox_charge(L, (double)size - (double)pos);
    for (; pos < size; pos++) {
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

/* a < b, for the values at a and b: the comparator at 2, or Lua's '<'. */
static int sort_less(lua_State *L, int a, int b)
{
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    if (lua_isnoneornil(L, 2))
        return lua_compare(L, a, b, LUA_OPLT);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, a);
    lua_pushvalue(L, b);
    lua_call(L, 2, 1);
    int less = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return less;
}

/* t[i] sinks to its place in the heap t[1..n]. */
static void sort_sift(lua_State *L, lua_Integer i, lua_Integer n)
{
    lua_geti(L, 1, i);
    int v = lua_gettop(L);
    for (;;) {
        lua_Integer c = 2 * i;
        if (c > n)
            break;
        lua_geti(L, 1, c);
        if (c < n) {
            lua_geti(L, 1, c + 1);
            if (sort_less(L, -2, -1)) {
                lua_remove(L, -2);
                c++;
            } else {
                lua_pop(L, 1);
            }
        }
        if (!sort_less(L, v, -1)) {
            lua_pop(L, 1);
            break;
        }
        lua_seti(L, 1, i); /* the larger child moves up */
        i = c;
    }
    lua_seti(L, 1, i);
}

/* (t, comp, n): a heap sort of t[1..n], n as asked once. */
static int sort_heap(lua_State *L)
{
    lua_Integer n = lua_tointeger(L, 3);
    lua_settop(L, 2);
    luaL_checkstack(L, 8, "sort");
    for (lua_Integer i = n / 2; i >= 1; i--)
        sort_sift(L, i, n);
    for (lua_Integer e = n; e > 1; e--) {
        lua_geti(L, 1, 1);
        lua_geti(L, 1, e);
        lua_seti(L, 1, 1);
        lua_seti(L, 1, e);
        sort_sift(L, 1, e - 1);
    }
    return 0;
}

/* table.sort: the comparisons run in C, and each may be a C metamethod
 * (__lt, __index, __newindex) that no count hook sees: the sort is charged
 * up front, n (log2 n + 1) comparisons, an instruction each (100,000
 * elements: 1.8 million), for the length asked once. A table with
 * a metatable could answer another length to Lua's own sort, which asks
 * again: it is sorted here (a heap sort, n log n in the worst case) with the
 * length that was charged. */
int limits_sort(lua_State *L)
{
    lua_Integer n = table_len(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    if (n > 1) {
        luaL_argcheck(L, n < INT_MAX, 1, "array too big");
        sandbox_charge(L, (double)n * (log2((double)n) + 1));
    } else {
        sandbox_charge(L, 0);
    }
    if (!lua_getmetatable(L, 1))
        return call_original(L); /* a plain table: Lua's sort asks the same length */
    lua_pop(L, 1);
    lua_settop(L, 2);
    lua_pushinteger(L, n);
    lua_pushcfunction(L, sort_heap);
    lua_insert(L, 1);
    return call_placed(L);
}

/* table.concat, table.unpack: their loops end at the first
 * missing value (or at the stack's size), so the memory cap bounds them; they
 * do not start past the deadline. */
int limits_checked(lua_State *L)
{
    sandbox_charge(L, 0);
    return call_original(L);
}

