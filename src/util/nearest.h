/*
 * nearest.h -- "did you mean": the known name nearest to a misspelt one, for
 * every message that names an unknown key, option, command or operation (the
 * configuration, the command line, the emulator's request fields).
 */
#ifndef WIXR_NEAREST_H
#define WIXR_NEAREST_H

#include <stddef.h>

/* Edit distance (Levenshtein) between a and b; 99 when either is longer than
 * 64 bytes (no name is, and the table stays on the stack). */
int nearest_distance(const char *a, const char *b);

/* The name nearest to word (an edit distance under 3) among n table entries
 * whose first member is their name, stride bytes apart (a list of strings:
 * stride sizeof(char *)); the first of equally near ones; NULL when none is
 * that near. */
const char *nearest_name(const char *word, const void *table, size_t n, size_t stride);

#endif
