/*
 * keys.h -- derived idempotency keys: a hook run's mutating calls given no
 * key get one computed from the event, the hook and the call's rank in the
 * run, keyed by the installation's secret, so a run done again (a crash, a
 * retry, a fixed script) provisions nothing twice. docs/SECURITY.md
 * ("Derived idempotency keys") argues the choice.
 */
#ifndef WIXR_KEYS_H
#define WIXR_KEYS_H

#include <lua.h>
#include <stddef.h>

/* Inside a hook run for an event with an id: pushes the key for the run's
 * next mutating call and returns 1 (may raise: the installation key cannot
 * be read or made). Elsewhere 0, with nothing pushed (the caller makes a
 * random one). The host guard's next_key. */
int hooks_next_key(lua_State *L);

/* Checks <state_dir>/installation.key (the secret of the derived idempotency
 * keys) as a hook run reads it: 0 when it is sound or absent (the first real
 * run makes it), -1 with one line in err naming the file and the fix when it
 * is open to group or others, another user's, not a regular file or not 32
 * bytes. wixr check and wixr serve call it at start. */
int hooks_install_key_check(const char *state_dir, char *err, size_t errlen);

#endif
