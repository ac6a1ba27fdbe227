// upstream: a fast OpenAI-like backend for the Envoy load bench. Listens on
// every address of --listen (comma list, port 0 = ephemeral), reads each
// request body to the end and answers a fixed non-streaming chat completion
// (JSON with usage, content-length). GET /stats returns the request and body
// byte counts so far. Prints one JSON line {"addrs":[...]} on stdout.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

var (
	requests atomic.Int64
	bodyIn   atomic.Int64
)

const answer = `{"id":"cmpl-bench","object":"chat.completion","created":0,"model":"bench-model",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},` +
	`"finish_reason":"stop"}],"usage":{"prompt_tokens":0,"completion_tokens":6,"total_tokens":6}}`

func handle(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/stats" {
		w.Header().Set("content-type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int64{"requests": requests.Load(), "bodyBytes": bodyIn.Load()})
		return
	}
	n, _ := io.Copy(io.Discard, r.Body)
	requests.Add(1)
	bodyIn.Add(n)
	w.Header().Set("content-type", "application/json")
	w.Header().Set("content-length", fmt.Sprint(len(answer)))
	_, _ = io.WriteString(w, answer)
}

func main() {
	listen := flag.String("listen", "127.0.0.2:0", "comma-separated listen addresses")
	flag.Parse()
	mux := http.HandlerFunc(handle)
	var addrs []string
	for _, a := range strings.Split(*listen, ",") {
		lis, err := net.Listen("tcp", strings.TrimSpace(a))
		if err != nil {
			log.Fatal(err)
		}
		addrs = append(addrs, lis.Addr().String())
		// Envoy pools upstream connections: no idle timeout under it.
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 60 * time.Second}
		go func() { log.Fatal(srv.Serve(lis)) }()
	}
	out, _ := json.Marshal(map[string][]string{"addrs": addrs})
	fmt.Println(string(out))
	os.Stdout.Sync()
	select {}
}
