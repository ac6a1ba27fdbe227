// probe: latency of small things while a load runs. Every --interval it starts
// (in its own goroutine, so a slow answer never delays the next probe) one
// grpc.health.v1 Check per --health target and one small HTTP POST per --http
// target, until --duration passes; then prints one JSON object with, per
// target, the count, errors, p50/p90/p99/max in ms and how many took ≥ 10 ms;
// and, under "slowTicks", every tick in which some probe took ≥ 10 ms with what
// each target took in that tick (a stall of the machine or of this process
// slows every target of a tick at once; one of the server only its own).
//
//	--health name=host:port[/service]   (repeatable)
//	--http   name=URL                   (repeatable; body from --body)
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

type sampler struct {
	mu     sync.Mutex
	ms     []float64
	byTick map[int]float64
	errors int
	last   string
}

const slowMs = 10

func (s *sampler) add(tick int, d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errors++
		s.last = err.Error()
		return
	}
	ms := float64(d.Microseconds()) / 1000
	s.ms = append(s.ms, ms)
	if s.byTick == nil {
		s.byTick = map[int]float64{}
	}
	s.byTick[tick] = ms
}

func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func (s *sampler) summary() map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := append([]float64(nil), s.ms...)
	sort.Float64s(v)
	over := 0
	for _, x := range v {
		if x >= slowMs {
			over++
		}
	}
	out := map[string]any{
		"count": len(v), "errors": s.errors, "over10ms": over,
		"p50": pct(v, 0.5), "p90": pct(v, 0.9), "p99": pct(v, 0.99), "max": pct(v, 1),
	}
	if s.last != "" {
		out["lastError"] = s.last
	}
	return out
}

func split(v string) (string, string) {
	name, rest, ok := strings.Cut(v, "=")
	if !ok {
		log.Fatalf("expected name=target, got %q", v)
	}
	return name, rest
}

func main() {
	var healths, https list
	flag.Var(&healths, "health", "name=host:port[/service] (repeatable)")
	flag.Var(&https, "http", "name=URL (repeatable)")
	bodyFile := flag.String("body", "", "request body file for --http targets")
	interval := flag.Duration("interval", 50*time.Millisecond, "time between probes")
	duration := flag.Duration("duration", 10*time.Second, "how long to probe")
	timeout := flag.Duration("timeout", 10*time.Second, "per-probe timeout")
	flag.Parse()

	var body []byte
	if *bodyFile != "" {
		var err error
		if body, err = os.ReadFile(*bodyFile); err != nil {
			log.Fatal(err)
		}
	}
	type probe struct {
		name string
		s    *sampler
		run  func(ctx context.Context) error
	}
	var probes []probe
	for _, h := range healths {
		name, target := split(h)
		addr, service, _ := strings.Cut(target, "/")
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			log.Fatal(err)
		}
		client := healthpb.NewHealthClient(conn)
		probes = append(probes, probe{name, &sampler{}, func(ctx context.Context) error {
			r, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
			if err == nil && r.Status != healthpb.HealthCheckResponse_SERVING {
				err = fmt.Errorf("status %v", r.Status)
			}
			return err
		}})
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, h := range https {
		name, url := split(h)
		probes = append(probes, probe{name, &sampler{}, func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("content-type", "application/json")
			res, err := hc.Do(req)
			if err != nil {
				return err
			}
			defer res.Body.Close()
			if _, err := io.Copy(io.Discard, res.Body); err != nil {
				return err
			}
			if res.StatusCode != 200 {
				return fmt.Errorf("HTTP %d", res.StatusCode)
			}
			return nil
		}})
	}
	// Warm every connection once (not measured).
	for _, p := range probes {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		_ = p.run(ctx)
		cancel()
	}
	var wg sync.WaitGroup
	tick := time.NewTicker(*interval)
	end := time.Now().Add(*duration)
	ticks := 0
	for now := time.Now(); now.Before(end); now = <-tick.C {
		for _, p := range probes {
			wg.Add(1)
			go func(n int) {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				defer cancel()
				t0 := time.Now()
				err := p.run(ctx)
				p.s.add(n, time.Since(t0), err)
			}(ticks)
		}
		ticks++
	}
	tick.Stop()
	wg.Wait()
	out := map[string]any{}
	for _, p := range probes {
		out[p.name] = p.s.summary()
	}
	slow := []map[string]any{}
	for n := 0; n < ticks; n++ {
		row := map[string]any{"tick": n}
		hit := false
		for _, p := range probes {
			if ms, ok := p.s.byTick[n]; ok {
				row[p.name] = ms
				hit = hit || ms >= slowMs
			}
		}
		if hit {
			slow = append(slow, row)
		}
	}
	out["slowTicks"] = slow
	enc := json.NewEncoder(os.Stdout)
	_ = enc.Encode(out)
}
