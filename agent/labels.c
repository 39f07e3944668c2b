/* agent/labels.c: the label list the authority hands out. */
#include <stdlib.h>

#include "agent/authority.h"

void agent_labels_free(struct agent_labels *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free((char *)l->items[i].name);
        free((char *)l->items[i].value);
    }
    free(l->items);
    l->items = NULL;
    l->n = 0;
}
