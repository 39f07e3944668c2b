/* jepsen/plot.c: the latency picture of a run as plain SVG (see run.h). */
#include <stdio.h>
#include <string.h>

#include "jepsen/run.h"
#include "lib/errors.h"

#define W 1000.0
#define H 500.0
#define ML 70.0 /* margins */
#define MR 20.0
#define MT 40.0
#define MB 50.0

double jepsen_ln(double x)
{
    if (!(x > 0))
        return -1e300;
    int k = 0;
    while (x >= 2.0) {
        x /= 2.0;
        k++;
    }
    while (x < 1.0) {
        x *= 2.0;
        k--;
    }
    /* ln(x) = 2 atanh(z), z = (x-1)/(x+1) in [0, 1/3) */
    double z = (x - 1.0) / (x + 1.0), z2 = z * z, term = z, sum = 0.0;
    for (int n = 1; n < 60; n += 2) {
        sum += term / n;
        term *= z2;
    }
    return 2.0 * sum + k * 0.69314718055994530942;
}

static double lg10(double x)
{
    return jepsen_ln(x) / 2.30258509299404568402;
}

static double ipow10(double e)
{
    double r = 1.0;
    for (int i = 0; i < (int)(e < 0 ? -e : e); i++)
        r *= 10.0;
    return e < 0 ? 1.0 / r : r;
}

static double flr(double x)
{
    double t = (double)(long long)x;
    return t > x ? t - 1.0 : t;
}

static double cl(double x)
{
    double t = (double)(long long)x;
    return t < x ? t + 1.0 : t;
}

static bool starts_fault(const char *f)
{
    return strncmp(f, "start-", 6) == 0 || strcmp(f, "kill") == 0 || strcmp(f, "pause") == 0;
}

static bool ends_fault(const char *f)
{
    return strncmp(f, "stop-", 5) == 0 || strcmp(f, "start") == 0 || strcmp(f, "resume") == 0 ||
           strcmp(f, "heal") == 0;
}

static void esc(struct rp_buf *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            rp_buf_append_str(out, "&lt;");
        else if (*s == '>')
            rp_buf_append_str(out, "&gt;");
        else if (*s == '&')
            rp_buf_append_str(out, "&amp;");
        else
            rp_buf_append(out, s, 1);
    }
}

int jepsen_plot_latency(const struct jepsen_history *h, const char *title, struct rp_buf *out)
{
    int64_t tmax = 1;
    double lmin = 1e-4, lmax = 1.0; /* seconds, widened to the data */
    for (size_t i = 0; i < h->n_ops; i++) {
        const struct jepsen_op *op = &h->ops[i];
        if (op->time > tmax)
            tmax = op->time;
        if (op->nemesis || op->type != JEPSEN_INVOKE || op->peer == JEPSEN_NONE)
            continue;
        double l = (double)(h->ops[op->peer].time - op->time) / 1e9;
        if (l > 0 && l < lmin)
            lmin = l;
        if (l > lmax)
            lmax = l;
    }
    double lo = flr(lg10(lmin)), hi = cl(lg10(lmax));
    if (hi <= lo)
        hi = lo + 1;
    double pw = W - ML - MR, ph = H - MT - MB;
#define X(t) (ML + pw * (double)(t) / (double)tmax)
#define Y(l) (MT + ph * (1.0 - (lg10(l) - lo) / (hi - lo)))
    rp_buf_printf(out,
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                  "font-family=\"sans-serif\" font-size=\"12\">\n"
                  "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" "
                  "y=\"20\" font-size=\"14\">",
                  W, H, ML);
    esc(out, title);
    rp_buf_append_str(out, "</text>\n");
    /* Nemesis intervals. */
    int64_t open = -1;
    for (size_t i = 0; i < h->n_ops; i++) {
        const struct jepsen_op *op = &h->ops[i];
        if (!op->nemesis)
            continue;
        if (starts_fault(op->f) && open < 0) {
            open = op->time;
        } else if (ends_fault(op->f) && open >= 0) {
            rp_buf_printf(out,
                          "<rect x=\"%.1f\" y=\"%.0f\" width=\"%.1f\" height=\"%.0f\" "
                          "fill=\"#888\" fill-opacity=\"0.2\"/>\n",
                          X(open), MT, X(op->time) - X(open), ph);
            open = -1;
        }
    }
    if (open >= 0)
        rp_buf_printf(out,
                      "<rect x=\"%.1f\" y=\"%.0f\" width=\"%.1f\" height=\"%.0f\" fill=\"#888\" "
                      "fill-opacity=\"0.2\"/>\n",
                      X(open), MT, X(tmax) - X(open), ph);
    /* Axes and ticks. */
    rp_buf_printf(out,
                  "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
                  "stroke=\"black\"/>\n",
                  ML, MT, pw, ph);
    for (double e = lo; e <= hi; e++) {
        double y = MT + ph * (1.0 - (e - lo) / (hi - lo));
        rp_buf_printf(out,
                      "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                      "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%g s</text>\n",
                      ML, ML + pw, y, y, ML - 5, y + 4, ipow10(e));
    }
    double secs = (double)tmax / 1e9;
    double step = secs > 120 ? 30 : secs > 40 ? 10 : 5;
    for (double s = 0; s <= secs; s += step)
        rp_buf_printf(out, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.0f</text>\n",
                      ML + pw * s / secs, MT + ph + 15, s);
    rp_buf_printf(out,
                  "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">time since start (s); "
                  "shaded: nemesis active; green ok, red fail, orange info</text>\n",
                  ML + pw / 2, H - 12);
    /* Dots. */
    for (size_t i = 0; i < h->n_ops; i++) {
        const struct jepsen_op *op = &h->ops[i];
        if (op->nemesis || op->type != JEPSEN_INVOKE || op->peer == JEPSEN_NONE)
            continue;
        const struct jepsen_op *c = &h->ops[op->peer];
        double l = (double)(c->time - op->time) / 1e9;
        if (l <= 0)
            l = lmin;
        const char *color = c->type == JEPSEN_OK     ? "#2a2"
                            : c->type == JEPSEN_FAIL ? "#d22"
                                                     : "#f90";
        rp_buf_printf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"1.6\" fill=\"%s\"/>\n", X(op->time),
                      Y(l), color);
    }
#undef X
#undef Y
    return rp_buf_append_str(out, "</svg>\n") == 0 ? 0 : RP_ENOMEM;
}
