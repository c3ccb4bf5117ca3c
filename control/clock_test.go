package control

import (
	"context"
	"errors"
	"testing"
	"time"
)

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func TestFakeClockFiresInOrderAtDueTime(t *testing.T) {
	c := NewFakeClock(epoch)
	late := c.After(3 * time.Second)
	early := c.After(1 * time.Second)
	never := c.After(10 * time.Second)

	c.Advance(500 * time.Millisecond)
	if n := c.Pending(); n != 3 {
		t.Fatalf("Pending() = %d after 0.5s, want 3", n)
	}
	c.Advance(4 * time.Second)
	if got := <-early; !got.Equal(epoch.Add(time.Second)) {
		t.Errorf("early fired with %v, want %v", got, epoch.Add(time.Second))
	}
	if got := <-late; !got.Equal(epoch.Add(3 * time.Second)) {
		t.Errorf("late fired with %v, want %v", got, epoch.Add(3*time.Second))
	}
	select {
	case <-never:
		t.Error("10s timer fired after 4.5s")
	default:
	}
	if n := c.Pending(); n != 1 {
		t.Errorf("Pending() = %d, want 1", n)
	}
	if got := c.Now(); !got.Equal(epoch.Add(4500 * time.Millisecond)) {
		t.Errorf("Now() = %v, want epoch+4.5s", got)
	}
}

func TestFakeClockZeroDurationFiresAtOnce(t *testing.T) {
	c := NewFakeClock(epoch)
	select {
	case <-c.After(0):
	default:
		t.Fatal("After(0) did not fire at once")
	}
	if n := c.Pending(); n != 0 {
		t.Errorf("Pending() = %d, want 0", n)
	}
}

func TestFakeClockBlockUntil(t *testing.T) {
	c := NewFakeClock(epoch)
	go func() {
		c.After(time.Second)
		c.After(time.Second)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.BlockUntil(ctx, 2); err != nil {
		t.Fatalf("BlockUntil(2) = %v", err)
	}

	short, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	if err := c.BlockUntil(short, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("BlockUntil(3) with 2 pending = %v, want deadline exceeded", err)
	}
}
