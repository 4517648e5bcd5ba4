// Command kmsv2client calls a Kubernetes KMS v2 plugin over its unix socket the way
// kube-apiserver does (grpc-go and the k8s.io/kms generated client) and prints the latency of
// Decrypt as one JSON line. bench/bench_kms_plugin.py builds and runs it.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
)

type result struct {
	Calls int     `json:"calls"`
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	Rate  float64 `json:"rate"`
}

func main() {
	socket := flag.String("socket", "", "the plugin's unix socket")
	calls := flag.Int("calls", 5000, "Decrypt calls measured (after 200 to warm up)")
	concurrency := flag.Int("concurrency", 1, "client goroutines")
	flag.Parse()
	if err := run(*socket, *calls, *concurrency); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(socket string, calls, concurrency int) error {
	conn, err := grpc.NewClient("unix:"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := kmsapi.NewKeyManagementServiceClient(conn)
	ctx := context.Background()
	seed := make([]byte, 32)
	sealed, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "bench"})
	if err != nil {
		return err
	}
	request := &kmsapi.DecryptRequest{Ciphertext: sealed.Ciphertext, KeyId: sealed.KeyId, Uid: "bench"}
	decrypt := func() error {
		_, err := client.Decrypt(ctx, request)
		return err
	}
	for i := 0; i < 200; i++ {
		if err := decrypt(); err != nil {
			return err
		}
	}
	perWorker := calls / concurrency
	latencies := make([][]time.Duration, concurrency)
	errs := make([]error, concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				began := time.Now()
				if err := decrypt(); err != nil {
					errs[w] = err
					return
				}
				latencies[w] = append(latencies[w], time.Since(began))
			}
		}(w)
	}
	wg.Wait()
	wall := time.Since(start)
	var all []time.Duration
	for w := range latencies {
		if errs[w] != nil {
			return errs[w]
		}
		all = append(all, latencies[w]...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	at := func(q float64) float64 {
		return float64(all[int(q*float64(len(all)-1))]) / float64(time.Millisecond)
	}
	return json.NewEncoder(os.Stdout).Encode(result{
		Calls: len(all), P50Ms: at(0.50), P99Ms: at(0.99), Rate: float64(len(all)) / wall.Seconds(),
	})
}
