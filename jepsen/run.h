/* jepsen/run.h: pieces of build/jepsen-run (jepsen/main_run.c) that live in
 * libjepsen.a so that they can be tested on their own.
 *
 * jepsen_plot_latency: the latency picture of a run (issue 4, item 6). */
#ifndef JEPSEN_RUN_H
#define JEPSEN_RUN_H

#include "jepsen/history.h"
#include "lib/buf.h"

/* Appends an SVG document to @out: one dot per completed client op at
 * (invoke time, latency), latency on a log scale, colored by outcome (ok
 * green, fail red, info orange), and the nemesis intervals shaded (from a
 * nemesis "start-*", "kill" or "pause" line to the next nemesis "stop-*",
 * "start" or "resume" line, or to the end of the history). @title is
 * escaped. RP_ENOMEM. */
/* Natural logarithm of @x > 0 without libm (the build links no -lm): error < 1e-12. */
double jepsen_ln(double x);

int jepsen_plot_latency(const struct jepsen_history *h, const char *title, struct rp_buf *out);

#endif
