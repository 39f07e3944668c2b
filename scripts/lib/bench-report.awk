# scripts/lib/bench-report.awk: turns the runs of scripts/bench.sh into the results
# directory (docs/benchmarks.md): one JSON file per benchmark cell, report.md and
# plot.svg. Plain POSIX awk (Debian's mawk): no plotting tool, no JSON library.
#
#   awk -v out=DIR -v header=FILE -f scripts/lib/bench-report.awk runs.jsonl
#
# Each input line is one run: the one-line JSON object of tools/rpbench or
# tools/etcdbench, to which bench.sh prepended "seq", "rep" and "load1". The objects
# are flat apart from "errors_by_code", so a field is found by its name. header is a
# Markdown file (machine, commit, settings) that opens report.md.

# The value of field @k in the JSON line @s ("" when missing): strings lose their
# quotes, numbers stay text.
function field(s, k,    i, r) {
    i = index(s, "\"" k "\": ")
    if (i == 0)
        return ""
    r = substr(s, i + length(k) + 4)
    if (substr(r, 1, 1) == "\"") {
        r = substr(r, 2)
        return substr(r, 1, index(r, "\"") - 1)
    }
    match(r, /^[-0-9.eE+]+/)
    return substr(r, 1, RLENGTH)
}

# Sorts a[1..n] numerically (insertion sort: at most a few repetitions).
function nsort(a, n,    i, j, t) {
    for (i = 2; i <= n; i++) {
        t = a[i]
        for (j = i - 1; j >= 1 && a[j] > t; j--)
            a[j + 1] = a[j]
        a[j + 1] = t
    }
}

# min, median and max of the values of metric @m for system @sys in cell @c, into
# S_MIN, S_MED, S_MAX; returns the number of runs (0: none).
function stats(c, sys, m,    n, i, v) {
    n = NRUNS[c, sys]
    for (i = 1; i <= n; i++)
        v[i] = VAL[c, sys, i, m] + 0
    if (n == 0) {
        S_MIN = S_MED = S_MAX = 0
        return 0
    }
    nsort(v, n)
    S_MIN = v[1]
    S_MAX = v[n]
    S_MED = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    return n
}

function size_name(b) {
    if (b >= 1048576 && b % 1048576 == 0)
        return (b / 1048576) "MiB"
    if (b >= 1024 && b % 1024 == 0)
        return (b / 1024) "KiB"
    return b "B"
}

function ms(us) { return sprintf("%.2f", us / 1000) }

function json_escape(s) {
    gsub(/\\/, "\\\\", s)
    gsub(/"/, "\\\"", s)
    return s
}

{
    line = $0
    sys = field(line, "system")
    op = field(line, "op")
    if (sys == "" || op == "" || op == "fill")
        next
    c = op SUBSEP field(line, "value_size") SUBSEP field(line, "clients")
    if (!(c in CELL)) {
        CELL[c] = 1
        NCELLS++
        CELLS[NCELLS] = c
        COP[c] = op
        CSIZE[c] = field(line, "value_size") + 0
        CCLI[c] = field(line, "clients") + 0
        CKEYS[c] = field(line, "keys")
    }
    if (!((c, sys) in NRUNS)) {
        NRUNS[c, sys] = 0
        if (!(sys in SYS)) {
            SYS[sys] = 1
        }
    }
    n = ++NRUNS[c, sys]
    VAL[c, sys, n, "ops_per_s"] = field(line, "ops_per_s")
    VAL[c, sys, n, "p50_us"] = field(line, "p50_us")
    VAL[c, sys, n, "p99_us"] = field(line, "p99_us")
    VAL[c, sys, n, "cmin"] = field(line, "client_ops_min")
    VAL[c, sys, n, "cmed"] = field(line, "client_ops_median")
    ERRS[c, sys] += field(line, "errors")
    RAW[c, sys, n] = line
    if (field(line, "conns") != "")
        CONNS[c, sys] = field(line, "conns")
    LOAD[++NALL] = field(line, "load1")
    ALL[NALL] = line
}

# The median ratio and the medians of one cell, into R_* (returns 0 when a side is
# missing).
function cell_summary(c) {
    if (!stats(c, "raftport", "ops_per_s"))
        return 0
    R_RP = S_MED; R_RP_MIN = S_MIN; R_RP_MAX = S_MAX
    if (!stats(c, "etcd", "ops_per_s"))
        return 0
    R_E = S_MED; R_E_MIN = S_MIN; R_E_MAX = S_MAX
    stats(c, "raftport", "p50_us"); R_RP50 = S_MED
    stats(c, "etcd", "p50_us"); R_E50 = S_MED
    stats(c, "raftport", "p99_us"); R_RP99 = S_MED
    stats(c, "etcd", "p99_us"); R_E99 = S_MED
    R_RATIO = R_E > 0 ? R_RP / R_E : 0
    return 1
}

# "least / median": the answers the least served client and the median client had in
# the window, medians over the runs ("?" for runs made before the tools reported it).
function served(c, sys,    lo) {
    if (VAL[c, sys, 1, "cmin"] == "")
        return "?"
    stats(c, sys, "cmin"); lo = S_MED
    stats(c, sys, "cmed")
    return sprintf("%d / %d", lo, S_MED)
}

# A remark for a target when Raftport left some clients nearly unanswered: its
# percentiles then rest on the clients it did serve.
function starved(c,    lo) {
    if (VAL[c, "raftport", 1, "cmin"] == "")
        return ""
    stats(c, "raftport", "cmin"); lo = S_MED
    stats(c, "raftport", "cmed")
    if (lo > 0 && lo * 10 >= S_MED)
        return ""
    return sprintf(" (Raftport's least served client had %d answers, the median one %d)", lo, S_MED)
}

function find_cell(op, size, clients,    c) {
    c = op SUBSEP size SUBSEP clients
    return (c in CELL) ? c : ""
}

function write_cell_json(c,    f, s, i, n, m, k, sysname) {
    f = out "/" COP[c] "-" size_name(CSIZE[c]) "-" CCLI[c] "c.json"
    printf "{\n  \"op\": \"%s\", \"value_size\": %d, \"clients\": %d, \"keys\": %s,\n", \
        COP[c], CSIZE[c], CCLI[c], CKEYS[c] > f
    k = 0
    for (s = 1; s <= 3; s++) {
        sysname = s == 1 ? "raftport" : s == 2 ? "etcd" : "etcd-gateway"
        if (!((c, sysname) in NRUNS))
            continue
        printf "%s  \"%s\": {\n", (k++ ? ",\n" : ""), sysname > f
        for (m = 1; m <= 3; m++) {
            name = m == 1 ? "ops_per_s" : m == 2 ? "p50_us" : "p99_us"
            stats(c, sysname, name)
            printf "    \"%s\": {\"min\": %s, \"median\": %s, \"max\": %s},\n", name, S_MIN, S_MED, \
                S_MAX > f
        }
        printf "    \"errors\": %d,\n    \"runs\": [\n", ERRS[c, sysname] > f
        n = NRUNS[c, sysname]
        for (i = 1; i <= n; i++)
            printf "      %s%s\n", RAW[c, sysname, i], (i < n ? "," : "") > f
        printf "    ]\n  }" > f
    }
    if (cell_summary(c))
        printf ",\n  \"ratio_ops_per_s_median\": %.3f", R_RATIO > f
    printf "\n}\n" > f
    close(f)
}

# ---- the plot: throughput and p99 against clients, one row per operation -------------

# A tick step for a linear axis from 0 to @maxv: 1, 2 or 5 times a power of ten,
# giving 5 to 10 ticks.
function nice_step(maxv,    f) {
    f = 1
    while (f * 10 <= maxv) f *= 10
    while (f > maxv) f /= 10
    if (maxv / f >= 5) return f
    if (maxv / f >= 2) return f / 2
    return f / 5
}

function lg(x) { return log(x) / log(10) }

# One panel at (px, py) of size PW x PH: metric m of operation op (256 B cells, or
# whatever value size the operation's smallest cells have) for both systems.
function panel(op, m, title, logy, px, py,    i, c, x, y, s, sysname, col, n, xs, pts, \
               ymax, ymin, step, t, xpos, ypos, lo, hi, cli, ncli, sizes, vsz, path) {
    # Client counts of this operation at its value size, in ascending order.
    vsz = PLOTSIZE[op]
    ncli = 0
    for (i = 1; i <= NCELLS; i++) {
        c = CELLS[i]
        if (COP[c] == op && CSIZE[c] == vsz)
            cli[++ncli] = CCLI[c]
    }
    nsort(cli, ncli)
    ymax = 0; ymin = 1e18
    for (i = 1; i <= ncli; i++) {
        c = find_cell(op, vsz, cli[i])
        for (s = 1; s <= 2; s++) {
            sysname = s == 1 ? "raftport" : "etcd"
            if (!stats(c, sysname, m)) continue
            if (S_MAX > ymax) ymax = S_MAX
            if (S_MIN > 0 && S_MIN < ymin) ymin = S_MIN
        }
    }
    if (ymax <= 0) ymax = 1
    L = 64; R = 16; T = 28; B = 40
    W = PW - L - R; H = PH - T - B
    printf "<g transform=\"translate(%d,%d)\">\n", px, py > SVG
    printf "<text x=\"%d\" y=\"18\" class=\"title\">%s</text>\n", L, title > SVG
    printf "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" class=\"frame\"/>\n", L, T, W, H > SVG
    # y axis
    if (logy) {
        lo = int(lg(ymin)); if (10 ^ lo > ymin) lo--
        hi = int(lg(ymax)); if (10 ^ hi < ymax) hi++
        if (hi == lo) hi++
        for (t = lo; t <= hi; t++) {
            ypos = T + H - (t - lo) / (hi - lo) * H
            printf "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>\n", L, L + W, ypos, ypos > SVG
            printf "<text x=\"%d\" y=\"%.1f\" class=\"ytick\">%s</text>\n", L - 4, ypos + 4, \
                (m == "ops_per_s" ? 10 ^ t : (10 ^ t) / 1000 " ms") > SVG
        }
    } else {
        step = nice_step(ymax)
        hi = step * (int(ymax / step) + 1)
        for (t = 0; t <= hi + step / 2; t += step) {
            ypos = T + H - t / hi * H
            printf "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>\n", L, L + W, ypos, ypos > SVG
            printf "<text x=\"%d\" y=\"%.1f\" class=\"ytick\">%s</text>\n", L - 4, ypos + 4, \
                (m == "ops_per_s" ? t : t / 1000 " ms") > SVG
        }
    }
    # x axis: clients on a log scale
    for (i = 1; i <= ncli; i++) {
        xpos = ncli == 1 ? L + W / 2 : L + 12 + (lg(cli[i]) - lg(cli[1])) / (lg(cli[ncli]) - lg(cli[1])) * (W - 24)
        xs[i] = xpos
        printf "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%d\" class=\"grid\"/>\n", xpos, xpos, T, T + H > SVG
        printf "<text x=\"%.1f\" y=\"%d\" class=\"xtick\">%d</text>\n", xpos, T + H + 14, cli[i] > SVG
    }
    printf "<text x=\"%d\" y=\"%d\" class=\"xlabel\">clients</text>\n", L + W / 2, T + H + 32 > SVG
    for (s = 1; s <= 2; s++) {
        sysname = s == 1 ? "raftport" : "etcd"
        path = ""
        for (i = 1; i <= ncli; i++) {
            c = find_cell(op, vsz, cli[i])
            if (!stats(c, sysname, m)) continue
            if (logy) {
                y = T + H - (lg(S_MED > 0 ? S_MED : 1) - lo) / (hi - lo) * H
                ylo = T + H - (lg(S_MIN > 0 ? S_MIN : 1) - lo) / (hi - lo) * H
                yhi = T + H - (lg(S_MAX > 0 ? S_MAX : 1) - lo) / (hi - lo) * H
            } else {
                y = T + H - S_MED / hi * H
                ylo = T + H - S_MIN / hi * H
                yhi = T + H - S_MAX / hi * H
            }
            path = path (path == "" ? "M" : " L") sprintf("%.1f %.1f", xs[i], y)
            printf "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" class=\"%s whisker\"/>\n", \
                xs[i], xs[i], ylo, yhi, sysname > SVG
            printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" class=\"%s dot\"/>\n", xs[i], y, sysname > SVG
        }
        if (path != "")
            printf "<path d=\"%s\" class=\"%s line\"/>\n", path, sysname > SVG
    }
    printf "</g>\n" > SVG
}

function write_svg(    i, c, nops, ops, op, row) {
    nops = 0
    for (i = 1; i <= NCELLS; i++) {
        c = CELLS[i]
        op = COP[c]
        if (!(op in PLOTSIZE)) {
            PLOTSIZE[op] = CSIZE[c]
            ops[++nops] = op
        } else if (CSIZE[c] < PLOTSIZE[op]) {
            PLOTSIZE[op] = CSIZE[c]
        }
    }
    PW = 460; PH = 280
    SVG = out "/plot.svg"
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">\n", \
        2 * PW, nops * PH + 40, 2 * PW, nops * PH + 40 > SVG
    printf "<style>text{font-family:sans-serif;font-size:11px;fill:#222}" \
        ".title{font-size:13px;font-weight:bold}.ytick{text-anchor:end}.xtick,.xlabel{text-anchor:middle}" \
        ".frame{fill:none;stroke:#888}.grid{stroke:#ddd;stroke-width:1}" \
        "path.line{fill:none;stroke-width:2}line.line{stroke-width:2}.whisker{stroke-width:1.5}" \
        ".raftport{stroke:#1f77b4;fill:#1f77b4}.etcd{stroke:#d62728;fill:#d62728}</style>\n" > SVG
    printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n" > SVG
    for (row = 1; row <= nops; row++) {
        op = ops[row]
        panel(op, "ops_per_s", op " " size_name(PLOTSIZE[op]) ": throughput (ops/s, median, min-max)", 0, 0, (row - 1) * PH)
        panel(op, "p99_us", op " " size_name(PLOTSIZE[op]) ": p99 latency (log scale)", 1, PW, (row - 1) * PH)
    }
    # legend
    y = nops * PH + 20
    printf "<line x1=\"64\" x2=\"94\" y1=\"%d\" y2=\"%d\" class=\"raftport line\"/>" \
        "<text x=\"100\" y=\"%d\">Raftport (rpbench, msgpack over mutual TLS 1.3)</text>\n", y, y, y + 4 > SVG
    printf "<line x1=\"420\" x2=\"450\" y1=\"%d\" y2=\"%d\" class=\"etcd line\"/>" \
        "<text x=\"456\" y=\"%d\">etcd (etcdbench, native gRPC over mutual TLS 1.3)</text>\n", y, y, y + 4 > SVG
    printf "</svg>\n" > SVG
    close(SVG)
}

# ---- report.md ---------------------------------------------------------------------------

function verdict(ok) { return ok ? "**met**" : "**not met**" }

function target_rows(    c) {
    print "| target | measured (medians) | result |" > MD
    print "|---|---|---|" > MD
    split("64 256", tc, " ")
    for (ti = 1; ti <= 2; ti++) {
        c = find_cell("put", 256, tc[ti])
        if (c != "" && cell_summary(c))
            printf "| put 256 B, %d clients: >= 2x etcd's ops/s, p99 no worse | %.0f vs %.0f ops/s (%.2fx); p99 %s vs %s ms%s | %s |\n", \
                tc[ti], R_RP, R_E, R_RATIO, ms(R_RP99), ms(R_E99), starved(c), verdict(R_RATIO >= 2 && R_RP99 <= R_E99) > MD
        else
            printf "| put 256 B, %d clients: >= 2x etcd's ops/s, p99 no worse | not measured in this run | - |\n", tc[ti] > MD
    }
    c = find_cell("put", 256, 1)
    if (c != "" && cell_summary(c))
        printf "| put 256 B, 1 client: p50 no worse than etcd's | p50 %s vs %s ms | %s |\n", \
            ms(R_RP50), ms(R_E50), verdict(R_RP50 <= R_E50) > MD
    else
        print "| put 256 B, 1 client: p50 no worse than etcd's | not measured in this run | - |" > MD
    c = find_cell("get", 256, 64)
    if (c != "" && cell_summary(c))
        printf "| linearizable get, 64 clients: >= 2x etcd's ops/s | %.0f vs %.0f ops/s (%.2fx) | %s |\n", \
            R_RP, R_E, R_RATIO, verdict(R_RATIO >= 2) > MD
    else
        print "| linearizable get, 64 clients: >= 2x etcd's ops/s | not measured in this run | - |" > MD
    c = find_cell("put", 1048576, 4)
    if (c != "" && cell_summary(c))
        printf "| put 1 MiB, 4 clients: >= etcd's ops/s | %.1f vs %.1f ops/s (%.2fx) | %s |\n", \
            R_RP, R_E, R_RATIO, verdict(R_RATIO >= 1) > MD
    else
        print "| put 1 MiB, 4 clients: >= etcd's ops/s | not measured in this run | - |" > MD
}

function fmt_ops(v) { return v >= 100 ? sprintf("%.0f", v) : sprintf("%.1f", v) }

function main_table(    i, c, reps) {
    print "| op | value | clients | Raftport ops/s: median (min-max) | etcd ops/s: median (min-max) | ratio | Raftport p50 ms | etcd p50 ms | Raftport p99 ms | etcd p99 ms | answers per client, least / median: Raftport; etcd | runs | errors |" > MD
    print "|---|---|---|---|---|---|---|---|---|---|---|---|---|" > MD
    for (i = 1; i <= NCELLS; i++) {
        c = CELLS[i]
        if (!cell_summary(c))
            continue
        reps = NRUNS[c, "raftport"] "+" NRUNS[c, "etcd"]
        stats(c, "raftport", "p99_us"); rp99 = sprintf("%s (%s-%s)", ms(S_MED), ms(S_MIN), ms(S_MAX))
        stats(c, "etcd", "p99_us"); e99 = sprintf("%s (%s-%s)", ms(S_MED), ms(S_MIN), ms(S_MAX))
        printf "| %s | %s | %d | %s (%s-%s) | %s (%s-%s) | %.2f | %s | %s | %s | %s | %s; %s | %s | %d/%d |\n", \
            COP[c], size_name(CSIZE[c]), CCLI[c], fmt_ops(R_RP), fmt_ops(R_RP_MIN), fmt_ops(R_RP_MAX), \
            fmt_ops(R_E), fmt_ops(R_E_MIN), fmt_ops(R_E_MAX), R_RATIO, ms(R_RP50), ms(R_E50), \
            rp99, e99, served(c, "raftport"), served(c, "etcd"), reps, ERRS[c, "raftport"], ERRS[c, "etcd"] > MD
    }
}

function gateway_table(    i, c, any) {
    any = 0
    for (i = 1; i <= NCELLS; i++) {
        c = CELLS[i]
        if (!((c, "etcd-gateway") in NRUNS) || !stats(c, "etcd-gateway", "ops_per_s"))
            continue
        if (!any++) {
            print "" > MD
            print "### Footnote: etcd through its v3 JSON gateway (BENCH_ETCD_GATEWAY=1)" > MD
            print "" > MD
            print "The old comparison: `tools/rpbench --etcd`, HTTP/1.1 keep-alive to etcd's gRPC-JSON gateway, which decodes JSON and re-sends each request to etcd over a loopback gRPC connection. It costs etcd CPU, so these figures are not the comparison; they are here to compare with earlier reports." > MD
            print "" > MD
            print "| op | value | clients | etcd gateway ops/s: median (min-max) | p50 ms | p99 ms | native gRPC ops/s (median) |" > MD
            print "|---|---|---|---|---|---|---|" > MD
        }
        g = S_MED; gmin = S_MIN; gmax = S_MAX
        stats(c, "etcd-gateway", "p50_us"); g50 = S_MED
        stats(c, "etcd-gateway", "p99_us"); g99 = S_MED
        stats(c, "etcd", "ops_per_s")
        printf "| %s | %s | %d | %s (%s-%s) | %s | %s | %s |\n", COP[c], size_name(CSIZE[c]), CCLI[c], \
            fmt_ops(g), fmt_ops(gmin), fmt_ops(gmax), ms(g50), ms(g99), fmt_ops(S_MED) > MD
    }
}

function runs_table(    i, l) {
    print "| # | rep | system | op | value | clients | ops/s | p50 ms | p99 ms | max ms | answers per client, least / median | errors | load average (1 min) at start |" > MD
    print "|---|---|---|---|---|---|---|---|---|---|---|---|---|" > MD
    for (i = 1; i <= NALL; i++) {
        l = ALL[i]
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |\n", field(l, "seq"), \
            field(l, "rep"), field(l, "system"), field(l, "op"), size_name(field(l, "value_size") + 0), \
            field(l, "clients"), fmt_ops(field(l, "ops_per_s") + 0), ms(field(l, "p50_us")), \
            ms(field(l, "p99_us")), ms(field(l, "max_us")), field(l, "client_ops_min"), \
            field(l, "client_ops_median"), field(l, "errors"), field(l, "load1") > MD
    }
}

END {
    for (i = 1; i <= NCELLS; i++)
        write_cell_json(CELLS[i])
    write_svg()
    MD = out "/report.md"
    while ((getline l < header) > 0)
        print l > MD
    close(header)
    print "" > MD
    print "## Targets of issue 13" > MD
    print "" > MD
    target_rows()
    print "" > MD
    print "## Figures" > MD
    print "" > MD
    print "Medians over the repetitions, with min-max in brackets; ratio = Raftport's median ops/s / etcd's median ops/s. ops/s counts requests started and answered in the measured window; the latencies take every request started in it, also those answered after it. Answers per client: how many the least served client and the median client had in the window (a least far below the median: some clients were left waiting). runs: Raftport's + etcd's repetitions. One JSON file per row (`<op>-<value>-<clients>c.json`) holds every run." > MD
    print "" > MD
    main_table()
    print "" > MD
    print "![throughput and p99 against clients, both systems](plot.svg)" > MD
    print "" > MD
    print "[plot.svg](plot.svg): medians with min-max whiskers." > MD
    gateway_table()
    print "" > MD
    print "## Every run, in the order it ran" > MD
    print "" > MD
    print "The two systems alternate cell by cell: within a repetition each cell runs both systems back to back, and which one goes first alternates from cell to cell and from repetition to repetition." > MD
    print "" > MD
    runs_table()
    close(MD)
}
