/* lib/json.h: JSON output of msgpack values (for tctl and tsh). */
#ifndef RP_JSON_H
#define RP_JSON_H

#include <msgpack.h>
#include <stdbool.h>

#include "lib/buf.h"

/* Appends @o as JSON to @out. Strings are escaped (invalid UTF-8 bytes become
 * U+FFFD), binary values become hex strings, map keys that are not strings are
 * stringified. @indent > 0 pretty-prints with that many spaces per level. */
int rp_json_from_mp(struct rp_buf *out, const msgpack_object *o, int indent);
/* Appends @s (@n bytes) as a JSON string literal. */
int rp_json_str(struct rp_buf *out, const char *s, size_t n);

#endif
