/*
 * guard.h -- the hooks' answers to the host's guard (runtime/host.h): what
 * wix.core and the scheduler's outcome ask of a hook run, without including
 * this layer. hook_load installs it on the host.
 */
#ifndef WIXR_GUARD_H
#define WIXR_GUARD_H

#include "../runtime/host.h"

extern const host_guard hooks_guard;

#endif
