package taskscaler

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
)

// memStorage is an in-memory Storage.
type memStorage struct {
	mu sync.Mutex
	m  map[string]InstanceState
}

func (s *memStorage) Load(_ context.Context, id string) (InstanceState, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.m[id]
	return st, ok, nil
}

func (s *memStorage) Save(_ context.Context, st InstanceState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[st.ID] = st
	return nil
}

func (s *memStorage) Delete(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
	return nil
}

func TestLoopStorageRestoresPreexisting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		known := g.AddInstance(provider.StateRunning)
		unknown := g.AddInstance(provider.StateRunning)
		store := &memStorage{m: map[string]InstanceState{
			known: {ID: known, UseCount: 2, Acquisitions: []string{"old-job"}},
		}}
		var mu sync.Mutex
		var ups []UpInstance
		ts := newTS(t, g, WithStorage(store), WithMaxUseCount(3), WithReadyUp(func(ctx context.Context, u UpInstance) error {
			mu.Lock()
			defer mu.Unlock()
			ups = append(ups, u)
			return nil
		}))
		if err := ts.ConfigureSchedule(Schedule{IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		settle(10 * time.Second)
		inst := g.Instances()
		if inst[known] != provider.StateRunning {
			t.Errorf("restored instance %s is %q", known, inst[known])
		}
		if st, ok := inst[unknown]; ok && st != provider.StateDeleting {
			t.Errorf("pre-existing instance without stored state is %q, want removed", st)
		}
		mu.Lock()
		if len(ups) != 1 || !ups[0].Restored || ups[0].UseCount != 2 || ups[0].Cause != CausePreexisted || len(ups[0].Acquisitions) != 1 {
			t.Errorf("ready-up saw %+v", ups)
		}
		mu.Unlock()
		// The restored use count applies: one more acquisition retires it.
		if c := ts.Capacity(); c.Idle != 1 || c.Unavailable != 0 {
			t.Errorf("capacity %+v", c)
		}
		if err := ts.Reserve("k"); err != nil {
			t.Fatal(err)
		}
		if _, err := ts.Acquire(context.Background(), "k"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		store.mu.Lock()
		if st := store.m[known]; st.UseCount != 3 || len(st.Acquisitions) != 1 || st.Acquisitions[0] != "k" || st.Info.ID != known {
			t.Errorf("stored state after acquisition: %+v", st)
		}
		store.mu.Unlock()
		ts.Release("k")
		settle(10 * time.Second)
		if _, ok := g.Instances()[known]; ok && g.Instances()[known] != provider.StateDeleting {
			t.Error("instance at max_use_count (2 restored + 1) not removed")
		}
		store.mu.Lock()
		defer store.mu.Unlock()
		for _, id := range []string{known, unknown} {
			if _, ok := store.m[id]; ok {
				t.Errorf("state of removed instance %s kept in storage", id)
			}
		}
	})
}

func TestLoopReservationThrottling(t *testing.T) {
	for _, throttle := range []bool{true, false} {
		t.Run(map[bool]string{true: "on", false: "off"}[throttle], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g := fake.New(fake.Config{})
				ts := newTS(t, g, WithCapacityPerInstance(2), WithReservationThrottling(throttle))
				if err := ts.ConfigureSchedule(Schedule{IdleCount: 6, IdleTime: time.Minute}); err != nil {
					t.Fatal(err)
				}
				settle(10 * time.Second)
				if err := ts.ConfigureSchedule(Schedule{IdleCount: 2, IdleTime: time.Minute, PreemptiveMode: new(true)}); err != nil {
					t.Fatal(err)
				}
				// 6 idle slots: with throttling one instance's worth (2)
				// stays unreserved.
				n := 0
				for i := range 10 {
					if ts.Reserve(string(rune('a'+i))) == nil {
						n++
					}
				}
				want := 6
				if throttle {
					want = 4
				}
				if n != want {
					t.Fatalf("%d reservations succeeded, want %d", n, want)
				}
				// Long polls keep their reservations; idle instances past
				// idle_time can still go only with throttling.
				settle(2 * time.Minute)
				wantInst := 3
				if throttle {
					wantInst = 2
				}
				if got := g.Count(provider.StateRunning); got != wantInst {
					t.Errorf("%d running instances after idle_time, want %d", got, wantInst)
				}
			})
		})
	}
}
