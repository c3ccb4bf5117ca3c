package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// TestTCHookWithOffloads: with TX checksum offload and TSO left on, the
// kernel's senders hand the TC hook partial checksums and GSO packets. Bulk
// data echoed through the load balancer in both directions must arrive
// intact (a wrong checksum would be dropped and stall the transfer), and
// the TC hook must have seen GSO packets.
func TestTCHookWithOffloads(t *testing.T) {
	c := newCluster(t, clusterOpts{hook: hookCases[2], echo: true, offloads: true, extra: []string{"--check", "tcp"}})
	c.startLB(c.lb1())
	const size = 8 << 20
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := 0; i < 6; i++ {
		a := c.Agents[i%len(c.Agents)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			conn, err := a.DialContext(ctx, "tcp", net.JoinHostPort(c.front.String(), "6443"))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(60 * time.Second))
			data := make([]byte, size)
			rand.Read(data)
			want := sha256.Sum256(data)
			go func() { conn.Write(data) }()
			got := make([]byte, size)
			if _, err := io.ReadFull(conn, got); err != nil {
				errs <- err
				return
			}
			if sha256.Sum256(got) != want || !bytes.Equal(got[:64], data[:64]) {
				errs <- io.ErrUnexpectedEOF
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("echo through the TC hook with offloads on: %v", err)
	}
	st := c.status(c.lb1())
	if st.Counters["gso"] == 0 {
		t.Fatalf("the TC hook saw no GSO packet (counters %v): the test did not exercise what it is for", st.Counters)
	}
	t.Logf("REPORT: tc with offloads: 6 x 8 MiB echoed intact; gso packets %d, to_backend %d, to_client %d",
		st.Counters["gso"], st.Counters["to_backend"], st.Counters["to_client"])
}
