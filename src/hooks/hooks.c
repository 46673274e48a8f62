/*
 * hooks.c -- the hook table and event dispatch (see hooks.h).
 */
#define _GNU_SOURCE
#include "hooks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../json/json.h"

/* The place of c->hooks[i] among the hooks of its event (from 1; disabled ones count), as keys.c
 * names a hook without an id: byevent indexes every hook's event. */
static int place_in_event(const name_index *byevent, const wixr_config *c, int i)
{
    int n;
    const int *pos = name_index_find(byevent, c->hooks[i].event, &n);
    int lo = 0, hi = n - 1;
    while (lo < hi) { /* (positions are in list order) */
        int mid = (lo + hi) / 2;
        if (pos[mid] < i)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo + 1;
}

static int same_text(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

/* Do a and b (c->hooks[i], f->hooks[j]) define the same hook, as far as its state is concerned? */
static int same_def(const hook_def *a, int aplace, const hook_def *b, int bplace)
{
    return !strcmp(a->event, b->event) && same_text(a->id, b->id) && (a->id || aplace == bplace) &&
           !strcmp(a->script, b->script) && same_text(a->options_json, b->options_json) &&
           a->limits.instructions == b->limits.instructions && a->limits.memory_mb == b->limits.memory_mb &&
           a->limits.wall_ms == b->limits.wall_ms && a->allow == b->allow && a->max_mutations == b->max_mutations;
}

/* Indexes of every hook's event and script, for the look-ups of a reload. */
typedef struct def_index {
    name_index event, script;
} def_index;

static int def_index_build(def_index *x, const wixr_config *c)
{
    const char **ev = calloc(c->nhooks ? (size_t)c->nhooks : 1, sizeof *ev);
    const char **sc = calloc(c->nhooks ? (size_t)c->nhooks : 1, sizeof *sc);
    int rc = ev && sc ? 0 : -1;
    for (int i = 0; !rc && i < c->nhooks; i++) {
        ev[i] = c->hooks[i].event;
        sc[i] = c->hooks[i].script;
    }
    if (!rc && (name_index_build(&x->event, ev, c->nhooks) < 0 || name_index_build(&x->script, sc, c->nhooks) < 0))
        rc = -1;
    free(ev);
    free(sc);
    if (rc < 0) {
        name_index_free(&x->event);
        name_index_free(&x->script);
    }
    return rc;
}

/* The state of `from` that def (c->hooks[i]) may keep, or NULL: a script the
 * config loader saw as the state read it is kept unread; one it cannot tell
 * (changed within the last second) is read and compared. */
static hook_rt *kept_state(const hook_table *from, const def_index *fx, const wixr_config *c, const def_index *cx,
                           int i)
{
    const hook_def *d = &c->hooks[i];
    int n;
    const int *cand = name_index_find(&fx->script, d->script, &n);
    int place = place_in_event(&cx->event, c, i);
    for (int k = 0; k < n; k++) {
        int j = cand[k];
        hook_rt *rt = from->rt[j];
        if (rt && same_def(d, place, &from->cfg->hooks[j], place_in_event(&fx->event, from->cfg, j))) {
            if (file_stamp_same(&d->seen, &rt->stamp))
                return rt;
            char err[64];
            size_t len;
            file_stamp stamp;
            char *text = hook_read_script(d, &len, &stamp, err, sizeof err);
            int same = text && len == rt->source_len && !memcmp(text, rt->source, len);
            free(text);
            if (same)
                rt->stamp = stamp; /* (the same text: next time its times may tell) */
            return same ? rt : NULL;
        }
    }
    return NULL;
}

hook_table *hooks_load(wixr_host *h, const wixr_config *cfg, buf_t *errors)
{
    return hooks_load_from(h, cfg, NULL, errors, NULL);
}

hook_table *hooks_load_from(wixr_host *h, const wixr_config *cfg, const hook_table *from, buf_t *errors, int *kept)
{
    hook_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->h = h;
    t->cfg = cfg;
    t->refs = 1;
    t->n = cfg->nhooks;
    t->rt = calloc(cfg->nhooks ? (size_t)cfg->nhooks : 1, sizeof *t->rt);
    t->rebuilt_before = calloc(cfg->nhooks ? (size_t)cfg->nhooks : 1, sizeof *t->rebuilt_before);
    if (!t->rt || !t->rebuilt_before) {
        free(t->rt);
        free(t->rebuilt_before);
        free(t);
        return NULL;
    }
    int bad = 0;
    def_index fx, cx;
    int indexed = from && def_index_build(&fx, from->cfg) == 0;
    if (indexed && def_index_build(&cx, cfg) < 0) {
        name_index_free(&fx.event);
        name_index_free(&fx.script);
        indexed = 0; /* (out of memory: everything is built anew) */
    }
    if (kept)
        *kept = 0;
    for (int i = 0; i < cfg->nhooks; i++) {
        if (!cfg->hooks[i].enabled)
            continue;
        if (indexed && (t->rt[i] = kept_state(from, &fx, cfg, &cx, i))) {
            t->rt[i]->refs++;
            t->rebuilt_before[i] = t->rt[i]->rebuilds;
            if (kept)
                (*kept)++;
            continue;
        }
        char err[2048];
        sched_progress++; /* (a worker loading many scripts is making progress) */
        t->rt[i] = hook_load(h, cfg, &cfg->hooks[i], err, sizeof err);
        if (!t->rt[i]) {
            if (errors->len)
                buf_addc(errors, '\n');
            buf_adds(errors, err);
            bad++;
        }
    }
    if (indexed) {
        name_index_free(&fx.event);
        name_index_free(&fx.script);
        name_index_free(&cx.event);
        name_index_free(&cx.script);
    }
    /* (every enabled hook has its rt: the same positions) */
    if (bad || config_index_events(cfg, &t->by_event) < 0) {
        if (!bad)
            buf_adds(errors, "out of memory");
        hooks_free(t);
        return NULL;
    }
    return t;
}

void hooks_adopt(hook_table *t)
{
    for (int i = 0; i < t->n; i++) {
        if (t->rt[i]) {
            t->rt[i]->def = &t->cfg->hooks[i];
            t->rt[i]->cfg = t->cfg;
        }
    }
}

void hooks_free(hook_table *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n; i++)
        hook_free(t->rt[i]);
    free(t->rt);
    free(t->rebuilt_before);
    name_index_free(&t->by_event);
    if (t->owned_cfg) {
        config_free(t->owned_cfg);
        free(t->owned_cfg);
    }
    free(t);
}

void hooks_ref(hook_table *t)
{
    t->refs++;
}

void hooks_unref(hook_table *t)
{
    if (t && --t->refs == 0)
        hooks_free(t);
}

static void free_later(void *arg)
{
    hooks_free(arg);
}

/* The last job of a replaced table may end inside a task's completion: the
 * table (and the Lua states its tasks live in) is freed from the loop, after. */
static void hooks_unref_later(hook_table *t)
{
    if (t && --t->refs == 0)
        sched_timer(t->h->sched, 0, free_later, t);
}

int hooks_count_for(const hook_table *t, const char *event)
{
    int n;
    name_index_find(&t->by_event, event, &n);
    return n;
}

static void hooks_unref_later(hook_table *t);
static void next_hook(event_job *j);
static void next_child(event_job *j);
static void event_start(event_job *j);

static void finish_job(event_job *j)
{
    j->done(j, j->arg);
}

static void child_done(event_job *c, void *arg)
{
    event_job *j = arg;
    (void)c;
    if (c->failed)
        j->failed = 1;
    next_child(j);
}

static void next_child(event_job *j)
{
    if (j->child_pos >= j->nchildren) {
        finish_job(j);
        return;
    }
    event_start(j->children[j->child_pos++]);
}

static event_job *job_new(hook_table *t, const char *name, const char *id, const char *data_json, int depth,
                          const char *chain, event_done_fn done, void *arg)
{
    event_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->t = t;
    hooks_ref(t);
    j->name = strdup(name);
    j->id = id ? strdup(id) : NULL;
    j->data_json = strdup(data_json ? data_json : "{}");
    j->depth = depth;
    if (chain) {
        if (asprintf(&j->chain, "%s>%s", chain, name) < 0)
            j->chain = NULL;
    } else {
        j->chain = strdup(name);
    }
    j->done = done;
    j->arg = arg;
    int nhooks;
    const int *hooks = name_index_find(&t->by_event, name, &nhooks);
    for (int i = 0; i < nhooks && j->nidx < (int)(sizeof j->idx / sizeof j->idx[0]); i++)
        j->idx[j->nidx++] = hooks[i];
    j->results = calloc(j->nidx ? (size_t)j->nidx : 1, sizeof *j->results);
    if (!j->name || !j->data_json || !j->chain || !j->results || (id && !j->id)) {
        event_job_free(j);
        return NULL;
    }
    for (int i = 0; i < j->nidx; i++) {
        j->results[i].hook = t->rt[j->idx[i]]->name;
        j->results[i].status = HOOK_SKIPPED;
    }
    return j;
}

/* Parses the emitted items and creates the child jobs. */
static void start_children(event_job *j, buf_t *emitted, int n)
{
    if (!n) {
        finish_job(j);
        return;
    }
    buf_t arr;
    buf_init(&arr, 0);
    buf_addc(&arr, '[');
    buf_add(&arr, emitted->data, emitted->len);
    buf_addc(&arr, ']');
    j->emitted_json = buf_steal(&arr, NULL);
    json_doc *doc;
    json_value *v = json_parse(j->emitted_json, strlen(j->emitted_json), 0, &doc, NULL);
    j->children = calloc((size_t)n, sizeof *j->children);
    int k = 0;
    for (json_value *it = v ? v->u.kids.head : NULL; it && j->children; it = it->next) {
        const char *name = json_get_str(it, "event");
        json_value *data = json_get(it, "data");
        buf_t d;
        buf_init(&d, 0);
        json_writer w;
        jw_init(&w, &d);
        if (data)
            jw_value(&w, data);
        else
            buf_adds(&d, "{}");
        char id[512];
        snprintf(id, sizeof id, "%s/%d", j->id ? j->id : "", k + 1);
        event_job *c = job_new(j->t, name ? name : "?", j->id ? id : NULL, buf_cstr(&d), j->depth + 1, j->chain,
                               child_done, j);
        buf_free(&d);
        if (c)
            j->children[k++] = c;
    }
    json_doc_free(doc);
    j->nchildren = k;
    next_child(j);
}

static void hook_finished(hook_run *r, void *arg)
{
    event_job *j = arg;
    hook_result *res = &j->results[j->pos];
    res->status = r->ok ? HOOK_OK : HOOK_FAILED;
    res->outcome = r->outcome;
    snprintf(res->code, sizeof res->code, "%s", r->error_code);
    res->result_json = r->result_json;
    r->result_json = NULL;
    res->error = r->error;
    r->error = NULL;
    res->ms = sched_now_ms() - r->started_ms;
    if (r->nplan) {
        buf_t p;
        buf_init(&p, 0);
        buf_addc(&p, '[');
        buf_add(&p, r->plan.data, r->plan.len);
        buf_addc(&p, ']');
        res->plan_json = buf_steal(&p, NULL);
    }
    /* Events a successful run emitted wait until every hook has run. */
    if (r->nemitted && r->ok) {
        if (!j->emitted_json) {
            j->emitted_json = strndup(r->emitted.data, r->emitted.len);
        } else {
            char *joined = NULL;
            if (asprintf(&joined, "%s,%.*s", j->emitted_json, (int)r->emitted.len, r->emitted.data) >= 0) {
                free(j->emitted_json);
                j->emitted_json = joined;
            }
        }
        j->nchildren += r->nemitted;
    }
    int stop = !r->ok && !j->t->cfg->hooks[j->idx[j->pos]].on_error_continue;
    if (!r->ok)
        j->failed = 1;
    hook_run_free(r);
    j->pos++;
    if (stop)
        j->pos = j->nidx; /* the rest are skipped */
    next_hook(j);
}

static void next_hook(event_job *j)
{
    if (j->pos >= j->nidx) {
        int n = j->nchildren;
        j->nchildren = 0;
        buf_t em;
        buf_init(&em, 0);
        if (j->emitted_json) {
            buf_adds(&em, j->emitted_json);
            free(j->emitted_json);
            j->emitted_json = NULL;
        }
        start_children(j, &em, n);
        buf_free(&em);
        return;
    }
    hook_rt *k = j->t->rt[j->idx[j->pos]];
    hook_run *r = hook_start(k, j->name, j->id, j->data_json, j->depth, j->chain, hook_finished, j);
    if (!r) {
        j->results[j->pos].status = HOOK_FAILED;
        j->results[j->pos].error = strdup("out of memory");
        j->failed = 1;
        j->pos = j->nidx;
        next_hook(j);
    }
}

static void event_start(event_job *j)
{
    next_hook(j);
}

event_job *event_fire(hook_table *t, const char *name, const char *id, const char *data_json, event_done_fn done,
                      void *arg)
{
    event_job *j = job_new(t, name, id, data_json, 0, NULL, done, arg);
    if (j)
        event_start(j);
    return j;
}

void event_job_free(event_job *j)
{
    if (!j)
        return;
    for (int i = 0; i < j->nidx && j->results; i++) {
        free(j->results[i].result_json);
        free(j->results[i].error);
        free(j->results[i].plan_json);
    }
    for (int i = 0; i < j->nchildren && j->children; i++)
        event_job_free(j->children[i]);
    free(j->children);
    free(j->results);
    free(j->emitted_json);
    free(j->name);
    free(j->id);
    free(j->data_json);
    free(j->chain);
    hooks_unref_later(j->t);
    free(j);
}

void event_job_json(const event_job *j, buf_t *b)
{
    static const char *const st[] = {"ok", "failed", "skipped"};
    json_writer w;
    jw_init(&w, b);
    jw_obj(&w);
    jw_kstr(&w, "event", j->name);
    jw_kstr(&w, "id", j->id);
    jw_key(&w, "ok");
    jw_bool(&w, !j->failed);
    jw_key(&w, "hooks");
    jw_arr(&w);
    for (int i = 0; i < j->nidx; i++) {
        const hook_result *r = &j->results[i];
        jw_obj(&w);
        jw_kstr(&w, "hook", r->hook);
        jw_kstr(&w, "status", st[r->status]);
        if (r->result_json) {
            jw_key(&w, "result");
            jw_raw(&w, r->result_json, strlen(r->result_json));
        }
        jw_kstr(&w, "error", r->error);
        if (r->plan_json) {
            jw_key(&w, "planned");
            jw_raw(&w, r->plan_json, strlen(r->plan_json));
        }
        jw_key(&w, "ms");
        jw_int(&w, r->ms);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    if (j->nchildren) {
        jw_key(&w, "chained");
        jw_arr(&w);
        for (int i = 0; i < j->nchildren; i++) {
            buf_t c;
            buf_init(&c, 0);
            event_job_json(j->children[i], &c);
            jw_raw(&w, c.data, c.len);
            buf_free(&c);
        }
        jw_arr_end(&w);
    }
    jw_obj_end(&w);
}
