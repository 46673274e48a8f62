/*
 * fuzz_catalog -- the emulator's catalog loader (src/emulator/emu_catalog.c
 * on src/yaml/ytree.c), from text in memory: emu_catalog_load_string, the
 * loader `wixr sandbox serve --catalog` and every in-process emulator use.
 *
 * Besides the sanitizers, it checks:
 *   - a refused catalog leaves a non-empty one-line message;
 *   - a loaded one keeps what the emulator relies on: products with a GUID id
 *     (each once), a name, a type, 1 to EMU_MAX_CYCLES billing cycles of a
 *     known shape, a delivery status and, when FAILED, a failure code;
 *     accounts listed once, sites in one account only, every parent listed;
 *   - a catalog the loader accepts opens an emulator (its accounts and sites
 *     seed the store without a clash), and each seeded account is there.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emulator/emu_internal.h"
#include "fuzz_emu.h"

#define TARGET "fuzz_catalog"
#define FILE_NAME "fuzz_catalog.yaml"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int is_guid(const char *s)
{
    return strlen(s) == 36 && emu_is_guid(s);
}

static void check_catalog(const emu_catalog *cat)
{
    for (int i = 0; i < cat->nproducts; i++) {
        const emu_product *p = &cat->products[i];
        if (!is_guid(p->id) || !p->name || !p->type || !p->delivery)
            fuzz_die(TARGET, "a product misses its id, name, type or delivery", p->id);
        if (p->ncycles < 1 || p->ncycles > EMU_MAX_CYCLES)
            fuzz_die(TARGET, "a product has no billing cycle, or too many", p->id);
        for (int c = 0; c < p->ncycles; c++) {
            const emu_cycle *cy = &p->cycles[c];
            int recurring = !strcmp(cy->type, "RECURRING");
            if (recurring ? !cy->unit[0] || cy->count < 1 : strcmp(cy->type, "ONE_TIME") || cy->unit[0])
                fuzz_die(TARGET, "a billing cycle of an unknown shape", p->id);
        }
        if (!strcmp(p->delivery, "FAILED") && !p->failure_code)
            fuzz_die(TARGET, "a FAILED product without a failure code", p->id);
        for (int j = 0; j < i; j++)
            if (!strcmp(cat->products[j].id, p->id))
                fuzz_die(TARGET, "a product listed twice", p->id);
    }
    for (int i = 0; i < cat->naccounts; i++) {
        const emu_seed_account *a = &cat->accounts[i];
        if (!is_guid(a->id) || !a->type || !a->name)
            fuzz_die(TARGET, "an account misses its id, type or name", a->id);
        int parent_found = !a->parent[0];
        for (int j = 0; j < cat->naccounts; j++) {
            if (j != i && !strcmp(cat->accounts[j].id, a->id))
                fuzz_die(TARGET, "an account listed twice", a->id);
            if (j != i && !strcmp(cat->accounts[j].id, a->parent))
                parent_found = 1;
            for (int k = 0; k < a->nsites; k++)
                for (int m = 0; m < cat->accounts[j].nsites; m++)
                    if ((j != i || m != k) && !strcmp(a->sites[k].id, cat->accounts[j].sites[m].id))
                        fuzz_die(TARGET, "a site listed twice", a->sites[k].id);
        }
        if (!parent_found)
            fuzz_die(TARGET, "a parent that is not listed", a->parent);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    emu_catalog cat;
    char err[4096];
    err[0] = '\0';
    if (emu_catalog_load_string(&cat, FILE_NAME, (const char *)data, size, err, sizeof err) < 0) {
        if (!err[0] || strchr(err, '\n'))
            fuzz_die(TARGET, "a refused catalog without a one-line message", err);
        return 0;
    }
    check_catalog(&cat);

    /* The same text as a file: an emulator opens on it and holds every seeded account. */
    FILE *f = fopen(FILE_NAME, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f))
        fuzz_die(TARGET, "cannot write " FILE_NAME " in the working folder", NULL);
    emu_options o = {.db_path = ":memory:", .catalog_path = FILE_NAME, .seed = 42};
    emu_t *e = emu_open(&o, err, sizeof err);
    if (!e)
        fuzz_die(TARGET, "a catalog the loader accepts does not open an emulator", err);
    char *answer = NULL;
    if (fuzz_emu_call(e, "GET", "/__admin/accounts", NULL, NULL, &answer) != 200)
        fuzz_die(TARGET, "the admin API does not list the accounts", answer);
    for (int i = 0; i < cat.naccounts; i++)
        if (!strstr(answer, cat.accounts[i].id))
            fuzz_die(TARGET, "a seeded account is missing", cat.accounts[i].id);
    free(answer);
    emu_close(e);
    emu_catalog_free(&cat);
    return 0;
}
