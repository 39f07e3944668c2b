// tools/etcdbench: the etcd side of scripts/bench.sh, over etcd's native gRPC API.
//
//	etcdbench --endpoints=URL[,URL...] --cacert=F --cert=F --key=F --op=OP --clients=N
//	          [--conns=M] [--duration=S] [--warmup=S] [--value-size=B] [--keys=K]
//	          [--key-prefix=P]
//
// It does what tools/rpbench.c does against Raftport, with etcd's own Go client
// (go.etcd.io/etcd/clientv3, the version Debian packages with etcd 3.4): N goroutines
// each keep one request in flight and send them back to back for S seconds, after
// --warmup seconds that are not counted. The N clients share M gRPC connections
// (client i uses connection i mod M; default M = N, one connection per client, as each
// rpbench client has its own). Connection j dials endpoint j mod (number of URLs).
//
// Operations (keys are "<prefix><i>" with i uniform in [0, --keys)):
//
//	put        Put of a value-size value.
//	get        linearizable Get of one key (etcd's ReadIndex).
//	get-stale  serializable Get (answered from the member's local state).
//	fill       writes every key once, split between the clients, ignoring --duration.
//
// The result is one line of JSON with the same fields as rpbench's (ops/s, latency
// percentiles in microseconds, errors), so that the bench script reads both alike.
// Latency runs from sending a request to having its answer. ops/s counts the requests
// that started and were answered inside the measured window; the latency percentiles
// take every request that started in it, also those answered after it ("late").
//
// It is built by scripts/bench.sh with Debian's Go in GOPATH mode against
// /usr/share/gocode (golang-etcd-server-dev), offline: nothing is downloaded.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/pkg/transport"
	"go.uber.org/zap"
	"google.golang.org/grpc/grpclog"
)

type worker struct {
	lat       []uint32 // microseconds: successful requests started in the window
	done      uint64   // those of them answered inside the window
	errors    uint64
	firstErr  string
	errCodes  map[string]uint64
	fillDone  time.Time
	rng       *rand.Rand
	cli       *clientv3.Client
	keyPrefix string
}

// errCode names an error briefly for errors_by_code: etcd's own error text is long and
// carries addresses, so keep its first clause.
func errCode(err error) string {
	s := err.Error()
	if i := strings.Index(s, "desc = "); i >= 0 {
		s = s[i+7:]
	}
	if len(s) > 48 {
		s = s[:48]
	}
	return s
}

func (w *worker) fail(err error) {
	if w.errors == 0 {
		w.firstErr = err.Error()
	}
	w.errors++
	if w.errCodes == nil {
		w.errCodes = map[string]uint64{}
	}
	if len(w.errCodes) < 16 {
		w.errCodes[errCode(err)]++
	} else {
		w.errCodes["other"]++
	}
}

func percentile(v []uint32, p float64) uint32 {
	if len(v) == 0 {
		return 0
	}
	i := int(p * float64(len(v)))
	if i >= len(v) {
		i = len(v) - 1
	}
	return v[i]
}

func die(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "etcdbench: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	endpoints := flag.String("endpoints", "", "etcd client URLs, comma-separated (https: mutual TLS)")
	cacert := flag.String("cacert", "", "CA certificate (PEM) that signed the members' certificates")
	cert := flag.String("cert", "", "client certificate (PEM)")
	key := flag.String("key", "", "client key (PEM)")
	op := flag.String("op", "", "put, get, get-stale or fill")
	clients := flag.Int("clients", 1, "concurrent clients, one request in flight each")
	conns := flag.Int("conns", 0, "gRPC connections the clients share (default: one per client)")
	duration := flag.Float64("duration", 10, "measured seconds")
	warmup := flag.Float64("warmup", 1, "seconds run before measuring")
	valueSize := flag.Int("value-size", 256, "bytes per value")
	keys := flag.Int("keys", 10000, "key space <prefix>0..<prefix><keys-1>")
	keyPrefix := flag.String("key-prefix", "k", "key prefix")
	flag.Parse()

	switch *op {
	case "put", "get", "get-stale", "fill":
	default:
		die("--op=%q: expected put, get, get-stale or fill", *op)
	}
	if *clients < 1 || *clients > 4096 {
		die("--clients: expected 1..4096")
	}
	if *conns == 0 {
		*conns = *clients
	}
	if *conns < 1 || *conns > *clients {
		die("--conns: expected 1..clients")
	}
	if *duration <= 0 || *warmup < 0 || *valueSize < 1 || *valueSize > 8<<20 || *keys < 1 {
		die("bad --duration, --warmup, --value-size (1..8 MiB) or --keys")
	}
	var urls []string
	for _, u := range strings.Split(*endpoints, ",") {
		if u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		die("--endpoints: expected at least one URL")
	}

	var tlsCfg *tls.Config
	if strings.HasPrefix(urls[0], "https://") {
		info := transport.TLSInfo{CertFile: *cert, KeyFile: *key, TrustedCAFile: *cacert}
		var err error
		if tlsCfg, err = info.ClientConfig(); err != nil {
			die("TLS files: %v", err)
		}
		// The protocol version Raftport's API uses.
		tlsCfg.MinVersion = tls.VersionTLS13
	}
	// The client's logs would otherwise go to stderr on every reconnect.
	clientv3.SetLogger(grpclog.NewLoggerV2(ioutil.Discard, ioutil.Discard, ioutil.Discard))

	quiet := zap.NewProductionConfig()
	quiet.Level = zap.NewAtomicLevelAt(zap.FatalLevel)
	cs := make([]*clientv3.Client, *conns)
	for j := range cs {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{urls[j%len(urls)]},
			TLS:         tlsCfg,
			DialTimeout: 10 * time.Second,
			LogConfig:   &quiet,
			// Large values: above the 2 MiB default send limit when asked to be.
			MaxCallSendMsgSize: *valueSize + (1 << 20),
		})
		if err != nil {
			die("connecting to %s: %v", urls[j%len(urls)], err)
		}
		// Connect and complete the TLS handshake before timing, as rpbench pings.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = c.Get(ctx, "etcdbench-ping", clientv3.WithSerializable())
		cancel()
		if err != nil {
			die("first request to %s: %v", urls[j%len(urls)], err)
		}
		cs[j] = c
	}

	value := make([]byte, *valueSize)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	val := string(value)

	ws := make([]worker, *clients)
	start := time.Now()
	from := start.Add(time.Duration(*warmup * float64(time.Second)))
	until := from.Add(time.Duration(*duration * float64(time.Second)))
	// One deadline for every request: a hung cluster ends the run instead of hanging it,
	// without a timer per request.
	ctx, cancel := context.WithDeadline(context.Background(), until.Add(30*time.Second))
	defer cancel()

	var wg sync.WaitGroup
	for i := range ws {
		w := &ws[i]
		w.cli = cs[i%len(cs)]
		w.rng = rand.New(rand.NewSource(time.Now().UnixNano() + int64(i)*7919))
		w.keyPrefix = *keyPrefix
		wg.Add(1)
		go func(idx int) {
			defer wg.Done()
			kv := w.cli.KV
			if *op == "fill" {
				for k := idx; k < *keys; k += *clients {
					t0 := time.Now()
					if _, err := kv.Put(ctx, fmt.Sprintf("%s%d", w.keyPrefix, k), val); err != nil {
						w.fail(err)
						continue
					}
					w.lat = append(w.lat, uint32(time.Since(t0)/time.Microsecond))
					w.done++
				}
				w.fillDone = time.Now()
				return
			}
			var opts []clientv3.OpOption
			if *op == "get-stale" {
				opts = append(opts, clientv3.WithSerializable())
			}
			for {
				t0 := time.Now()
				if !t0.Before(until) {
					return
				}
				k := fmt.Sprintf("%s%d", w.keyPrefix, w.rng.Intn(*keys))
				var err error
				if *op == "put" {
					_, err = kv.Put(ctx, k, val)
				} else {
					var r *clientv3.GetResponse
					r, err = kv.Get(ctx, k, opts...)
					// A get that finds nothing counts as an error, as Raftport's not_found.
					if err == nil && len(r.Kvs) == 0 {
						err = fmt.Errorf("not_found: key %s", k)
					}
				}
				t1 := time.Now()
				// As rpbench: throughput counts what started in the window and was
				// answered in it; the latencies take every request that started in
				// it, also one answered after it.
				if t0.Before(from) {
					continue
				}
				if err != nil {
					w.fail(err)
					continue
				}
				us := t1.Sub(t0) / time.Microsecond
				w.lat = append(w.lat, uint32(us))
				if !t1.After(until) {
					w.done++
				}
			}
		}(i)
	}
	wg.Wait()

	elapsed := *duration
	if *op == "fill" {
		last := start
		for i := range ws {
			if ws[i].fillDone.After(last) {
				last = ws[i].fillDone
			}
		}
		elapsed = last.Sub(start).Seconds()
	}
	var all []uint32
	var errors, done uint64
	firstErr := ""
	codes := map[string]uint64{}
	for i := range ws {
		all = append(all, ws[i].lat...)
		errors += ws[i].errors
		done += ws[i].done
		if firstErr == "" && ws[i].errors > 0 {
			firstErr = ws[i].firstErr
		}
		for c, n := range ws[i].errCodes {
			codes[c] += n
		}
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	// How evenly the clients were served, as rpbench reports it.
	per := make([]uint64, len(ws))
	for i := range ws {
		per[i] = ws[i].done
	}
	sort.Slice(per, func(a, b int) bool { return per[a] < per[b] })
	var sum float64
	for _, v := range all {
		sum += float64(v)
	}
	n := len(all)
	mean, maxUs, opsPerS := 0.0, uint32(0), 0.0
	if n > 0 {
		mean = sum / float64(n)
		maxUs = all[n-1]
	}
	if elapsed > 0 {
		opsPerS = float64(done) / elapsed
	}
	tlsName := "none"
	if tlsCfg != nil {
		tlsName = "TLSv1.3, client certificate"
	}
	// The fields and their order are rpbench's (scripts/bench.sh reads both alike).
	var b strings.Builder
	fmt.Fprintf(&b, "{\"system\": \"etcd\", \"op\": \"%s\", \"clients\": %d, \"duration_s\": %.3f, "+
		"\"value_size\": %d, \"keys\": %d, \"ops\": %d, \"ops_per_s\": %.1f, \"mean_us\": %.0f, "+
		"\"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, \"max_us\": %d, \"errors\": %d, \"late\": %d, "+
		"\"client_ops_min\": %d, \"client_ops_median\": %d, "+
		"\"api\": \"grpc\", \"conns\": %d, \"tls\": \"%s\"",
		*op, *clients, elapsed, *valueSize, *keys, done, opsPerS, mean,
		percentile(all, 0.50), percentile(all, 0.90), percentile(all, 0.99), maxUs, errors,
		uint64(n)-done, per[0], per[len(per)/2],
		*conns, tlsName)
	if errors > 0 {
		codesJSON, _ := json.Marshal(codes)
		firstJSON, _ := json.Marshal(firstErr)
		fmt.Fprintf(&b, ", \"errors_by_code\": %s, \"first_error\": %s", codesJSON, firstJSON)
	}
	b.WriteString("}\n")
	os.Stdout.WriteString(b.String())
	for _, c := range cs {
		c.Close()
	}
}
